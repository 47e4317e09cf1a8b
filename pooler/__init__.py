"""pooler: a PostgreSQL connection pooler that speaks odyssey's configuration language."""

__version__ = "0.1.0"
