"""Database URLs the project hands to SQLAlchemy (the team server's store, Optuna's storage)."""

from __future__ import annotations

_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def with_driver(url: str) -> str:
    """``postgresql://`` (or Heroku-style ``postgres://``) with the driver this project
    installs, psycopg2; any other URL unchanged.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed, and
    does not know ``postgres://`` at all.
    """
    for prefix in _POSTGRES_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url.removeprefix(prefix)
    return url


def is_postgres(url: str) -> bool:
    """A PostgreSQL URL, with or without a driver."""
    return url.startswith(("postgresql", "postgres://"))
