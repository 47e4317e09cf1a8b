"""The process tree: listen sockets, workers, signals, reload, slot broker, console, stats."""
