"""The Socket.IO side: event handlers (events.py), python-socketio (server.py), python-engineio (engine.py).

WebSocket frames go out through websocket.py; docs/architecture.md has the whole picture.
"""
