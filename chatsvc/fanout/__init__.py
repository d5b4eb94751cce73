"""Fan-out: delivering stored messages and notices to every socket of a room, on one instance or several."""
