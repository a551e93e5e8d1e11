"""Database URLs get the driver this project installs (psycopg2); is_postgres.

(tests/core/test_urls.py has the basic cases.)
"""

import pytest

from pipeline.core.urls import is_postgres, with_driver


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/mlflow", "postgresql+psycopg2://u:p@db:5432/mlflow"),
        ("postgres://u:p@db/mlflow", "postgresql+psycopg2://u:p@db/mlflow"),  # Heroku style
        ("postgresql+psycopg2://db/x", "postgresql+psycopg2://db/x"),  # already has one
        ("postgresql+asyncpg://db/x", "postgresql+asyncpg://db/x"),  # a user's choice stays
        ("sqlite:///optuna.db", "sqlite:///optuna.db"),
        ("sqlite:////abs/mlflow.db?timeout=60", "sqlite:////abs/mlflow.db?timeout=60"),
        ("mysql://db/x", "mysql://db/x"),
    ],
)
def test_with_driver(url, expected):
    assert with_driver(url) == expected


def test_with_driver_replaces_the_scheme_only():
    url = "postgresql://u:p@db/postgresql://odd"
    assert with_driver(url) == "postgresql+psycopg2://u:p@db/postgresql://odd"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://db/x", True),
        ("postgres://db/x", True),
        ("postgresql+psycopg2://db/x", True),
        ("sqlite:///x.db", False),
        ("mysql://db/x", False),
        ("http://postgres:5000", False),
    ],
)
def test_is_postgres(url, expected):
    assert is_postgres(url) is expected


def test_bare_postgresql_urls_get_the_installed_driver():
    assert with_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert with_driver("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"  # Heroku-style
