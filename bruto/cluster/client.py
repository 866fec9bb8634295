"""psycopg and psycopg_pool for bruto.cluster, imported here alone: a clear error when they are missing.

The product image (Dockerfile, target ``product``) carries no database
client; with ``BRUTO_DATABASE_URL`` set, whichever process reaches the
database first (the dispatcher's poller, a worker's summary) stops with this
message instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

try:
    import psycopg
    import psycopg_pool
except ImportError as error:  # psycopg also raises it when it finds no libpq
    raise ImportError("BRUTO_DATABASE_URL is set, but the PostgreSQL client is missing: pip install 'bruto[cluster]' "
                      f"(psycopg and psycopg_pool, over Debian's libpq5): {error}") from error

__all__ = ["psycopg", "psycopg_pool"]
