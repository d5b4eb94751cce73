"""chatsvc: a real-time chat service (Socket.IO rooms, history, friends, groups) on aiohttp and SQLite."""

__version__ = "0.1.0"
