"""The ``postgres_uri`` fixture is a real PostgreSQL server, as the Iceberg SQL catalog's tests need: a table
made, written and read back through SQLAlchemy and psycopg, the catalog's own stack; and the server
``postgres_server`` starts is gone once its block ends."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text

from helpers import postgres_server


def test_a_row_goes_in_and_comes_back(postgres_uri: str) -> None:
    engine = sqlalchemy.create_engine(postgres_uri)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE fixture_check (id integer PRIMARY KEY, name text NOT NULL)"))
            conn.execute(text("INSERT INTO fixture_check VALUES (:id, :name)"), {"id": 1, "name": "one"})
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text("SELECT id, name FROM fixture_check"))]
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            version = conn.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    assert rows == [(1, "one")]
    assert database == "catalog"
    assert engine.dialect.name == "postgresql" and version[0].isdigit()


def test_the_server_is_stopped_when_the_block_ends(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as uri:
        url = sqlalchemy.make_url(uri)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres", connect_timeout=5)
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()
