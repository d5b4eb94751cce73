"""The Socket.IO side: event handlers (events.py), the python-socketio server (server.py), Engine.IO (engine.py)."""
