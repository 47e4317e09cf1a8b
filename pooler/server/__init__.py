"""A pooler worker: listeners, client and server connections, routing and pools (uvloop)."""
