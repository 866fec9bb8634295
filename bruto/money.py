"""Money is integer cents everywhere; this renders it as the exact decimal text JSON carries."""

from __future__ import annotations


def format_cents(cents: int) -> str:
    """Exact decimal text of an amount in cents: 1990 -> '19.90'."""
    sign = "-" if cents < 0 else ""
    whole, fraction = divmod(abs(cents), 100)
    return f"{sign}{whole}.{fraction:02d}"
