"""PostgreSQL for tests: the machine's real server, a throw-away schema per use. Never skipped: an
unreachable server is a failure that says what to start."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def throwaway_schema_url(prefix: str = "test") -> Iterator[str]:
    """A URL whose search_path is a fresh schema (libpq `options`), dropped afterwards."""
    import adbc_driver_postgresql.dbapi as pg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = pg.connect(PG_ADMIN_URL)
    except pg.Error as exc:
        pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL} ({exc}); start it (trust auth, database 'test')")
    with conn, conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
        conn.commit()
        try:
            yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
        finally:
            cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
            conn.commit()


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    with throwaway_schema_url() as url:
        yield url
