"""pooler: a PostgreSQL connection pooler that speaks odyssey's configuration language."""

from pooler.compiled import use_python_where_due

__version__ = "0.1.0"

use_python_where_due()  # (before any module of the hot path is imported: pooler.compiled)
