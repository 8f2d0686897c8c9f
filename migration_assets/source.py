"""Read legacy EHR tables into polars from a source URL.

URL forms:

* ``sqlite:///path/to.db`` (also ``sqlite+pysqlite://``), SQLAlchemy's convention: ``sqlite:///rel.db`` is
  relative to the working directory, ``sqlite:////abs/path.db`` (``f"sqlite:///{absolute_path}"``) absolute.
* ``postgresql://user[:pw]@host:port/db[?options=-csearch_path%3Dschema]`` (also ``postgres://``,
  ``postgresql+psycopg2://``, ``postgresql+psycopg://``): read with ADBC (Arrow, binary COPY).
* ``csv:///abs/dir`` / ``parquet:///abs/dir``: one ``<table>.csv`` / ``<table>.parquet`` per table in the
  absolute folder ``/abs/dir``, as in a ``file:///`` URL.
* a plain folder path (no scheme), relative or absolute: ``<table>.parquet`` if present, else ``<table>.csv``.

Text columns always arrive as ``pl.String``; dates stay strings so the mapping step can parse them and
quarantine bad values.

A binary column of a SQL source (SQLite BLOB, PostgreSQL bytea: scanned documents kept in the database) is
never read in bulk: ``read_table`` gives, in its place, ``<column>_size`` (bytes) and ``<column>_sha1`` (the
SHA-1 of the bytes, base64, as FHIR's Attachment.hash), reading one value at a time in chunks, and
``blob_chunks`` streams one value by its row's key when it is uploaded. (``iter_table_batches`` still gives the
bytes themselves, one batch of rows at a time.)
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import polars as pl
import pyarrow as pa

__all__ = [
    "BLOB_CHUNK_BYTES",
    "blob_chunks",
    "blob_size",
    "column_max",
    "has_table",
    "iter_table_batches",
    "parse_source_url",
    "read_query",
    "read_rows_with",
    "read_table",
    "redact_url",
    "write_tables",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_SECRET_PARAMS = {"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key"}
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+adbc"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+pysqlite"}


def redact_url(url: str) -> str:
    """Drop user info and password-like query parameters, for logs and run metadata."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = any(k.lower() in _SECRET_PARAMS for k, _ in pairs)
    if "@" not in parts.netloc and not secret:
        return url  # nothing to hide; rebuilding would also turn sqlite://// into sqlite://
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in pairs if k.lower() not in _SECRET_PARAMS]) if secret else parts.query
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    return rebuilt + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def parse_source_url(url: str) -> tuple[str, str]:
    """Return (kind, location): kind in sqlite|postgresql|csv|parquet|folder.

    location is a file/folder path, or for postgresql the URL normalised to ``postgresql://``.
    """
    if "://" not in url:
        return "folder", url
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme in _PG_SCHEMES:
        # libpq / ADBC only understand postgresql://; the +driver suffix is SQLAlchemy's.
        return "postgresql", "postgresql://" + rest
    if scheme in _SQLITE_SCHEMES | {"csv", "parquet", "file"}:
        sqlite = scheme in _SQLITE_SCHEMES
        if not rest.startswith("/"):
            form = f"{scheme}:///relative.db or {scheme}:////absolute.db" if sqlite else f"{scheme}:///absolute/folder"
            raise ValueError(f"{redact_url(url)}: expected {form}")
        # sqlite:/// is SQLAlchemy's (three slashes, then a relative path); the folders' URLs are file URLs
        # (csv:////abs, the form older versions asked for, still means /abs).
        path = (rest[1:] if sqlite else "/" + rest.lstrip("/")).split("?", 1)[0]
        if not path.strip("/"):
            raise ValueError(f"{redact_url(url)}: no path given (in-memory databases are not supported)")
        kind = {"sqlite+pysqlite": "sqlite", "file": "folder"}.get(scheme, scheme)
        return kind, path
    raise ValueError(
        f"unsupported source URL scheme {scheme!r} in {redact_url(url)} "
        "(expected sqlite:///, postgresql://, csv:///, parquet:/// or a folder path)"
    )


def _check_ident(table: str, url: str) -> str:
    if not _IDENT.match(table):
        raise ValueError(f"invalid table name {table!r} for {redact_url(url)}")
    return ".".join(f'"{p}"' for p in table.split("."))


# ---------------------------------------------------------------------------------------------------
# SQL helpers


def _sqlite_path(location: str, url: str) -> str:
    # Connecting to a missing file would silently create an empty database.
    if not Path(location).is_file():
        raise FileNotFoundError(f"SQLite database not found: {location} (from {redact_url(url)})")
    return location


def _pg_connect(location: str, url: str) -> Any:
    import adbc_driver_postgresql.dbapi as pg_adbc

    try:
        return pg_adbc.connect(location)
    except pg_adbc.Error as exc:  # connection errors may echo the URI; re-raise with the redacted one
        detail = str(exc).replace(location, redact_url(url))
        password = urlsplit(location).password
        if password:
            detail = detail.replace(password, "***")
        raise ConnectionError(f"cannot connect to {redact_url(url)}: {detail}") from None


def _ro_uri(location: str) -> str:
    # Read-only URI (as_uri percent-escapes '?' and '#' in file names).
    return Path(location).resolve().as_uri() + "?mode=ro"


def _sqlite_columns(location: str, table: str) -> list[tuple[Any, ...]]:
    """SQLite's table_info rows of `table`: none when there is no such table."""
    schema, _, name = table.rpartition(".")
    pragma = f'PRAGMA "{schema}".table_info("{name}")' if schema else f'PRAGMA table_info("{name}")'
    with closing(sqlite3.connect(_ro_uri(location), uri=True)) as conn:
        return conn.execute(pragma).fetchall()


def _sqlite_table_info(location: str, url: str, table: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(columns, primary-key columns in key order, declared type per column) of a SQLite table."""
    rows = _sqlite_columns(location, table)
    if not rows:
        raise ValueError(f"table {table!r} not found in {redact_url(url)}")
    cols = [r[1] for r in rows]
    pk = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
    return cols, pk, {r[1]: (r[2] or "").upper() for r in rows}


def _sqlite_schema(cols: list[str], decl: dict[str, str]) -> dict[str, pl.DataType]:
    """Polars dtypes from SQLite declared types (type affinity rules, section 3.1 of the SQLite docs)."""
    out: dict[str, pl.DataType] = {}
    for c in cols:
        d = decl.get(c, "")
        if "INT" in d:
            out[c] = pl.Int64()
        elif any(t in d for t in ("CHAR", "CLOB", "TEXT")) or d == "":
            out[c] = pl.String()
        elif "BLOB" in d:
            out[c] = pl.Binary()
        elif any(t in d for t in ("REAL", "FLOA", "DOUB")):
            out[c] = pl.Float64()
        else:  # NUMERIC affinity: keep as text rather than guess
            out[c] = pl.String()
    return out


# A legacy database still written by its application is locked for a moment at each commit; readers
# wait that long rather than fail with "database is locked" (ADBC sets no busy timeout of its own).
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _wait_for_writers(cur: Any) -> None:
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cur.fetchall()


def _read_sqlite(location: str, query: str, schema: dict[str, pl.DataType] | None) -> pl.DataFrame:
    """ADBC (Arrow) read; falls back to the stdlib driver when ADBC's type inference trips.

    ADBC SQLite infers column types from the first batch of values, so a TEXT column that starts with
    NULLs comes back as Int64 (or fails). Declared types, when known, fix the result.
    """
    import adbc_driver_sqlite.dbapi as sqlite_adbc

    try:
        with sqlite_adbc.connect(location) as conn, conn.cursor() as cur:
            _wait_for_writers(cur)
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
            cur.execute(query)
            df = pl.from_arrow(cur.fetch_arrow_table())
            assert isinstance(df, pl.DataFrame)
    except OSError as exc:
        if "Type mismatch" not in str(exc):
            raise
        with closing(sqlite3.connect(_ro_uri(location), uri=True)) as lite:
            lite_cur = lite.execute(query)
            names = [d[0] for d in lite_cur.description]
            df = pl.DataFrame(
                lite_cur.fetchall(),
                schema={n: schema[n] for n in names} if schema and set(names) <= set(schema) else names,
                orient="row",
                infer_schema_length=None,
            )
    if schema:
        df = df.with_columns(pl.col(c).cast(t) for c, t in schema.items() if c in df.columns and df.schema[c] != t)
    return df


def _read_pg(location: str, url: str, query: str) -> pl.DataFrame:
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(query)
        df = pl.from_arrow(cur.fetch_arrow_table())
    assert isinstance(df, pl.DataFrame)
    return df


def _pg_table_name(location: str, url: str, table: str) -> str:
    """The table as it is spelled in the database: `table` itself, or the one table on the search path
    whose name differs from it only in case (exports create PERSON or person)."""
    if "." in table:
        return table
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ANY(current_schemas(false)) "
            f"AND lower(table_name) = lower('{table}') ORDER BY table_name = '{table}' DESC, "
            "array_position(current_schemas(false), table_schema::name)"
        )
        found = cur.fetchone()
    return str(found[0]) if found else table


def _pg_table_info(location: str, url: str, table: str) -> list[str]:
    """Primary-key columns of a PostgreSQL table (raises ValueError when the table is missing)."""
    quoted = ".".join(f'"{p}"' for p in table.split("."))
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT to_regclass('{quoted}')::oid")
        row = cur.fetchone()
        if row is None or row[0] is None:
            raise ValueError(f"table {table!r} not found in {redact_url(url)}")
        cur.execute(
            "SELECT a.attname FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            f"WHERE i.indrelid = {int(row[0])} AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)"
        )
        return [r[0] for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------------
# Files


_TABLE_FILE_KINDS = {"csv": ["csv"], "parquet": ["parquet"], "folder": ["parquet", "csv"]}


def _find_table_file(kind: str, location: str, url: str, table: str) -> tuple[str, Path] | None:
    """The file of `table` in a folder source, None when there is none (a missing folder is an error)."""
    folder = Path(location)
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder not found: {folder} (from {redact_url(url)}, table {table!r})")
    for ext in _TABLE_FILE_KINDS[kind]:
        path = folder / f"{table}.{ext}"
        if path.is_file():
            return ext, path
        # Exports name their files in upper or lower case (OHDSI tools write PERSON.csv or person.csv).
        same_name = [p for p in folder.glob("*") if p.name.lower() == path.name.lower() and p.is_file()]
        if len(same_name) == 1:
            return ext, same_name[0]
    return None


def _table_file(kind: str, location: str, url: str, table: str) -> tuple[str, Path]:
    found = _find_table_file(kind, location, url, table)
    if found is None:
        names = " or ".join(f"{table}.{e}" for e in _TABLE_FILE_KINDS[kind])
        raise FileNotFoundError(f"table {table!r} not found in {redact_url(url)}: no {names} in {location}")
    return found


def _read_csv(path: Path) -> pl.DataFrame:
    # Every CSV column is text: no inference, so ids like "007" and dates stay exactly as written.
    return pl.read_csv(path, infer_schema=False)


# ---------------------------------------------------------------------------------------------------
# Public API


def read_query(url: str, query: str) -> pl.DataFrame:
    """Run a SQL query against a sqlite:/// or postgresql:// source and return a DataFrame."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        return _read_sqlite(_sqlite_path(location, url), query, None)
    if kind == "postgresql":
        return _read_pg(location, url, query)
    raise ValueError(f"read_query needs a SQL source (sqlite:/// or postgresql://), got {redact_url(url)}")


def has_table(url: str, table: str) -> bool:
    """Whether the source holds `table` (in either case, as read_table finds it). A source that cannot
    be reached (no database file, no folder, no connection) is an error, not a missing table."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        _check_ident(table, url)
        return bool(_sqlite_columns(_sqlite_path(location, url), table))
    if kind == "postgresql":
        _check_ident(table, url)
        quoted = _check_ident(_pg_table_name(location, url, table), url)
        with _pg_connect(location, url) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT to_regclass('{quoted}') IS NOT NULL")
            row = cur.fetchone()
        return bool(row and row[0])
    return _find_table_file(kind, location, url, table) is not None


def read_table(url: str, table: str) -> pl.DataFrame:
    """Read a whole table (SQL table, or <table>.csv / <table>.parquet in a folder); a binary column of a
    SQL table arrives as `<column>_size` and `<column>_sha1` (the module's docstring)."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        path = _sqlite_path(location, url)
        quoted = _check_ident(table, url)
        cols, _pk, decl = _sqlite_table_info(path, url, table)
        schema = _sqlite_schema(cols, decl)
        blobs = [c for c in cols if schema[c] == pl.Binary()]
        if not blobs:
            return _read_sqlite(path, f"SELECT * FROM {quoted}", schema)
        listed = ", ".join(f'"{c}"' for c in cols if c not in blobs) or "1 AS _none"
        frame = _read_sqlite(path, f"SELECT rowid AS _rowid, {listed} FROM {quoted}", schema)
        return _with_blob_facts(frame, "_rowid", blobs, lambda column, rowid: _sqlite_blob(path, table, column, rowid))
    if kind == "postgresql":
        _check_ident(table, url)
        table = _pg_table_name(location, url, table)
        quoted = _check_ident(table, url)
        pk = _pg_table_info(location, url, table)  # clear error for a missing table
        blobs = _pg_binary_columns(location, url, table)
        if not blobs:
            return _read_pg(location, url, f"SELECT * FROM {quoted}")
        if len(pk) != 1:
            raise ValueError(
                f"table {table!r} of {redact_url(url)} holds bytea columns but has no one-column primary key"
            )
        cols = _read_pg(location, url, f"SELECT * FROM {quoted} LIMIT 0").columns
        listed = ", ".join(f'"{c}"' for c in cols if c not in blobs)
        frame = _read_pg(location, url, f'SELECT "{pk[0]}" AS _rowid, {listed} FROM {quoted}')
        return _with_blob_facts(frame, "_rowid", blobs, lambda column, key: _pg_blob(location, url, table, column, key))
    ext, file = _table_file(kind, location, url, table)
    return _read_csv(file) if ext == "csv" else pl.read_parquet(file)


# Values per `IN (...)` list: SQLite allows statements of up to a million bytes by default.
_IN_LIST_VALUES = 10_000
_INTEGER = re.compile(r"^-?[0-9]{1,18}$")


def _column_named(columns: list[str], column: str, table: str, url: str) -> str:
    """`column` as the table spells it (exports write CONCEPT_ID or concept_id)."""
    found = [name for name in columns if name.lower() == column.lower()]
    if not found:
        raise KeyError(f"table {table!r} of {redact_url(url)} has no column {column!r}")
    return column if column in found else found[0]


def _in_lists(column: str, values: list[str], integer: bool) -> Iterator[str]:
    """`"column" IN (...)` conditions of at most _IN_LIST_VALUES literals each. An integer column gets
    numbers (a value that is none matches no row; a quoted one would defeat its index)."""
    literals = (
        [v for v in values if _INTEGER.match(v)] if integer else ["'" + v.replace("'", "''") + "'" for v in values]
    )
    for start in range(0, len(literals), _IN_LIST_VALUES):
        yield f'"{column}" IN ({", ".join(literals[start : start + _IN_LIST_VALUES])})'


def read_rows_with(url: str, table: str, column: str, values: Iterable[str]) -> pl.DataFrame:
    """Only the rows of `table` whose `column` holds one of `values` (compared as text), never the whole
    table in memory: a `WHERE column IN (...)` for SQL sources, a filtered scan of a Parquet or CSV file
    (streamed: its other rows are read and dropped batch by batch). For a lookup table of millions of
    rows of which the data uses a few (a vocabulary's concepts)."""
    wanted = sorted({str(v) for v in values if v is not None})
    kind, location = parse_source_url(url)
    if kind in ("sqlite", "postgresql"):
        if kind == "sqlite":
            path = _sqlite_path(location, url)
            quoted = _check_ident(table, url)
            cols, _pk, decl = _sqlite_table_info(path, url, table)
            schema = _sqlite_schema(cols, decl)
            name = _column_named(cols, column, table, url)
            integer = schema[name] == pl.Int64()

            def run(query: str) -> pl.DataFrame:
                return _read_sqlite(path, query, schema)
        else:
            _check_ident(table, url)
            quoted = _check_ident(_pg_table_name(location, url, table), url)
            empty = _read_pg(location, url, f"SELECT * FROM {quoted} LIMIT 0")
            name = _column_named(empty.columns, column, table, url)
            integer = empty.schema[name].is_integer()

            def run(query: str) -> pl.DataFrame:
                return _read_pg(location, url, query)

        found = [run(f"SELECT * FROM {quoted} WHERE {condition}") for condition in _in_lists(name, wanted, integer)]
        return pl.concat(found, how="vertical") if found else run(f"SELECT * FROM {quoted} LIMIT 0")
    ext, file = _table_file(kind, location, url, table)
    scan = pl.scan_csv(file, infer_schema=False) if ext == "csv" else pl.scan_parquet(file)
    schema = scan.collect_schema()
    name = _column_named(list(schema.names()), column, table, url)
    # Compared in the column's own type, so that Parquet's statistics can skip row groups.
    keys = pl.Series(wanted, dtype=pl.String).cast(schema[name], strict=False).drop_nulls()
    return scan.filter(pl.col(name).is_in(keys.implode())).collect(engine="streaming")


# Bytes read at a time from a BLOB: a scanned document is never held whole in memory.
BLOB_CHUNK_BYTES = 1024 * 1024


def blob_chunks(url: str, table: str, column: str, key_column: str, key: str) -> Iterator[bytes] | None:
    """The bytes of `column` in the row of `table` whose `key_column` is `key`, BLOB_CHUNK_BYTES at a
    time; None when there is no such row or its value is NULL (the row went away since it was read)."""
    kind, location = parse_source_url(url)
    _check_ident(table, url)
    for name in (column, key_column):
        _check_ident(name, url)
    if kind == "sqlite":
        path = _sqlite_path(location, url)
        with closing(sqlite3.connect(_ro_uri(path), uri=True)) as lite:
            found = lite.execute(
                f'SELECT rowid FROM {_check_ident(table, url)} WHERE "{key_column}" = ? AND "{column}" IS NOT NULL',
                (key,),
            ).fetchone()
        return None if found is None else _sqlite_blob(path, table, column, found[0])
    if kind == "postgresql":
        table = _pg_table_name(location, url, table)
        return _pg_blob(location, url, table, column, key, key_column)
    raise ValueError(f"{redact_url(url)} is not a SQL source: it holds no BLOB columns")


def blob_size(url: str, table: str, column: str, key_column: str, key: str) -> int | None:
    """The length in bytes of one BLOB (as `blob_chunks` finds it) without reading it; None when NULL or gone."""
    kind, location = parse_source_url(url)
    quoted = _check_ident(table, url)
    for name in (column, key_column):
        _check_ident(name, url)
    if kind == "sqlite":
        with closing(sqlite3.connect(_ro_uri(_sqlite_path(location, url)), uri=True)) as lite:
            found = lite.execute(f'SELECT length("{column}") FROM {quoted} WHERE "{key_column}" = ?', (key,)).fetchone()
    elif kind == "postgresql":
        quoted = _check_ident(_pg_table_name(location, url, table), url)
        with _pg_connect(location, url) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT octet_length("{column}") FROM {quoted} WHERE "{key_column}"::text = $1', (key,))
            found = cur.fetchone()
    else:
        raise ValueError(f"{redact_url(url)} is not a SQL source: it holds no BLOB columns")
    return None if found is None or found[0] is None else int(found[0])


def _with_blob_facts(frame: pl.DataFrame, row_column: str, blobs: list[str], chunks_of: Any) -> pl.DataFrame:
    """`frame` with `<blob>_size` and `<blob>_sha1` for each binary column (each value read once, in
    chunks, one at a time), without the row locator column."""
    for column in blobs:
        sizes: list[int | None] = []
        digests: list[str | None] = []
        for row in frame[row_column]:
            chunks = chunks_of(column, row)
            if chunks is None:
                sizes.append(None)
                digests.append(None)
                continue
            sha1, size = hashlib.sha1(), 0
            for chunk in chunks:
                sha1.update(chunk)
                size += len(chunk)
            sizes.append(size)
            digests.append(base64.b64encode(sha1.digest()).decode("ascii"))
        frame = frame.with_columns(
            pl.Series(f"{column}_size", sizes, dtype=pl.Int64), pl.Series(f"{column}_sha1", digests, dtype=pl.String)
        )
    return frame.drop(row_column, "_none", strict=False)


def _sqlite_blob(location: str, table: str, column: str, rowid: int) -> Iterator[bytes] | None:
    """A SQLite value by rowid through SQLite's incremental BLOB I/O; None when NULL or gone."""
    with closing(sqlite3.connect(_ro_uri(location), uri=True)) as lite:
        found = lite.execute(f'SELECT typeof("{column}") FROM "{table}" WHERE rowid = ?', (rowid,)).fetchone()
    if found is None or found[0] == "null":
        return None

    def chunks() -> Iterator[bytes]:
        schema, _, name = table.rpartition(".")
        with (
            closing(sqlite3.connect(_ro_uri(location), uri=True)) as lite,
            lite.blobopen(name, column, rowid, readonly=True, name=schema or "main") as blob,
        ):
            while chunk := blob.read(BLOB_CHUNK_BYTES):
                yield chunk

    return chunks()


def _pg_binary_columns(location: str, url: str, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    where = f"table_schema = '{schema}'" if schema else "table_schema = ANY(current_schemas(false))"
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE {where} AND table_name = '{name}' AND data_type = 'bytea' ORDER BY ordinal_position"
        )
        return [r[0] for r in cur.fetchall()]


def _pg_blob(
    location: str, url: str, table: str, column: str, key: Any, key_column: str | None = None
) -> Iterator[bytes] | None:
    """A bytea value by its row's primary key, read in slices of BLOB_CHUNK_BYTES (one query each:
    the client never holds more than a slice); None when NULL or gone."""
    key_column = key_column or _pg_table_info(location, url, table)[0]
    quoted = ".".join(f'"{p}"' for p in table.split("."))
    where = f'FROM {quoted} WHERE "{key_column}"::text = $1'
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT octet_length("{column}") {where}', (str(key),))
        found = cur.fetchone()
    if found is None or found[0] is None:
        return None
    size = int(found[0])

    def chunks() -> Iterator[bytes]:
        with _pg_connect(location, url) as conn, conn.cursor() as cur:
            for offset in range(0, size, BLOB_CHUNK_BYTES):
                cur.execute(
                    f'SELECT substring("{column}" FROM $2::int FOR $3::int) {where}',
                    (str(key), offset + 1, BLOB_CHUNK_BYTES),
                )
                row = cur.fetchone()
                if row is None or row[0] is None:
                    raise LookupError(f"the row {key} of {table} went away while its {column} was read")
                yield bytes(row[0])

    return chunks()


def _rebatch(frames: Iterator[pl.DataFrame], batch_rows: int) -> Iterator[pl.DataFrame]:
    """Re-cut a stream of frames into frames of exactly batch_rows rows (the last may be shorter)."""
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    for frame in frames:
        if frame.height == 0:
            continue
        pending.append(frame)
        pending_rows += frame.height
        while pending_rows >= batch_rows:
            buf = pl.concat(pending, how="vertical") if len(pending) > 1 else pending[0]
            yield buf.slice(0, batch_rows)
            rest = buf.slice(batch_rows)
            pending = [rest] if rest.height else []
            pending_rows = rest.height
    if pending_rows:
        yield pl.concat(pending, how="vertical") if len(pending) > 1 else pending[0]


def _arrow_frames(reader: pa.RecordBatchReader, schema: dict[str, pl.DataType] | None) -> Iterator[pl.DataFrame]:
    for batch in reader:
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        if schema:
            df = df.with_columns(pl.col(c).cast(t) for c, t in schema.items() if c in df.columns and df.schema[c] != t)
        yield df


def iter_table_batches(url: str, table: str, batch_rows: int = 100_000) -> Iterator[pl.DataFrame]:
    """Yield a table in frames of ``batch_rows`` rows (last one shorter), memory bounded.

    SQL sources stream one ``SELECT ... ORDER BY <primary key>`` through an Arrow cursor (one
    consistent snapshot, stable order); Parquet streams record batches; CSV streams via polars'
    streaming engine. An empty table yields nothing.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        path = _sqlite_path(location, url)
        quoted = _check_ident(table, url)
        cols, pk, decl = _sqlite_table_info(path, url, table)
        schema = _sqlite_schema(cols, decl)
        order = f" ORDER BY {', '.join(f'{chr(34)}{c}{chr(34)}' for c in pk)}" if pk else ""
        yield from _rebatch(_iter_sqlite(path, f"SELECT * FROM {quoted}{order}", schema, batch_rows), batch_rows)
        return
    if kind == "postgresql":
        _check_ident(table, url)
        table = _pg_table_name(location, url, table)
        quoted = _check_ident(table, url)
        pk = _pg_table_info(location, url, table)
        order = f" ORDER BY {', '.join(f'{chr(34)}{c}{chr(34)}' for c in pk)}" if pk else ""
        yield from _rebatch(_iter_pg(location, url, f"SELECT * FROM {quoted}{order}"), batch_rows)
        return
    ext, file = _table_file(kind, location, url, table)
    if ext == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(file) as pf:
            yield from _rebatch(_arrow_frames(pf.iter_batches(batch_size=batch_rows), None), batch_rows)
    else:
        lf = pl.scan_csv(file, infer_schema=False)
        yield from _rebatch(iter(lf.collect_batches(chunk_size=batch_rows)), batch_rows)


def _iter_sqlite(location: str, query: str, schema: dict[str, pl.DataType], batch_rows: int) -> Iterator[pl.DataFrame]:
    import adbc_driver_sqlite.dbapi as sqlite_adbc

    emitted = 0
    try:
        with sqlite_adbc.connect(location) as conn, conn.cursor() as cur:
            _wait_for_writers(cur)
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(min(batch_rows, 65536))})
            cur.execute(query)
            for df in _arrow_frames(cur.fetch_record_batch(), schema):
                emitted += df.height
                yield df
        return
    except OSError as exc:
        if "Type mismatch" not in str(exc):
            raise
    # ADBC's per-batch type inference failed mid-stream: resume with the stdlib driver.
    with closing(sqlite3.connect(_ro_uri(location), uri=True)) as lite:
        lite_cur = lite.execute(f"{query} LIMIT -1 OFFSET {emitted}")
        names = [d[0] for d in lite_cur.description]
        while rows := lite_cur.fetchmany(batch_rows):
            yield pl.DataFrame(rows, schema={n: schema.get(n, pl.String()) for n in names}, orient="row")


def _iter_pg(location: str, url: str, query: str) -> Iterator[pl.DataFrame]:
    with _pg_connect(location, url) as conn, conn.cursor() as cur:
        cur.execute(query)
        yield from _arrow_frames(cur.fetch_record_batch(), None)


def column_max(url: str, table: str, column: str) -> str | None:
    """The largest value of a text column (e.g. the legacy ``updated_at``), None for an empty table.

    Cheap for SQL sources (one ``MAX`` query, no rows read); raises KeyError naming the table when it
    has no such column, so a caller can tell "nothing changed" from "changes are not tracked"."""
    kind, _location = parse_source_url(url)
    if kind in ("sqlite", "postgresql"):
        quoted = _check_ident(table, url)
        columns = read_query(url, f"SELECT * FROM {quoted} LIMIT 0").columns
        if column not in columns:
            raise KeyError(f"table {table!r} of {redact_url(url)} has no column {column!r}")
        found = read_query(url, f'SELECT CAST(MAX("{column}") AS TEXT) AS m FROM {quoted}')
        value = found["m"][0] if found.height else None
        return None if value is None else str(value)
    frame = read_table(url, table)
    if column not in frame.columns:
        raise KeyError(f"table {table!r} of {redact_url(url)} has no column {column!r}")
    value = frame[column].cast(pl.String).max()
    return None if value is None else str(value)


# -- writing (sample data, test fixtures) -----------------------------------------------------------


def write_tables(url: str, tables: Mapping[str, pl.DataFrame], primary_keys: Mapping[str, str]) -> dict[str, int]:
    """(Re)create `tables` at `url` (any form above), parents first as given; in a database each table
    gets the primary key `primary_keys` names (a table it does not name gets none)."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        _write_sqlite(Path(location), tables, primary_keys)
    elif kind == "postgresql":
        _write_postgres(location, tables, primary_keys)
    else:
        folder = Path(location)
        folder.mkdir(parents=True, exist_ok=True)
        for table, frame in tables.items():
            if kind == "csv":
                frame.write_csv(folder / f"{table}.csv")
            else:  # a plain folder gets Parquet: typed, compact, fastest to read back
                frame.write_parquet(folder / f"{table}.parquet")
    return {table: frame.height for table, frame in tables.items()}


def _create_table_sql(table: str, frame: pl.DataFrame, key: str | None, primary_key: bool, binary: str) -> str:
    """Every column TEXT but the binary ones (`binary`: BLOB in SQLite, BYTEA in PostgreSQL)."""
    definitions = [
        f'"{c}" {binary if t == pl.Binary() else "TEXT"}' + (" NOT NULL" if c == key else "")
        for c, t in frame.schema.items()
    ]
    if primary_key and key:
        definitions.append(f'PRIMARY KEY ("{key}")')
    return f"CREATE TABLE {_check_ident(table, 'sqlite')} ({', '.join(definitions)})"


def _write_sqlite(path: Path, tables: Mapping[str, pl.DataFrame], primary_keys: Mapping[str, str]) -> None:
    import adbc_driver_sqlite.dbapi as sqlite_adbc

    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite_adbc.connect(str(path)) as conn:
        cur = conn.cursor()
        for table in reversed(list(tables)):
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        for table, frame in tables.items():
            cur.execute(_create_table_sql(table, frame, primary_keys.get(table), primary_key=True, binary="BLOB"))
            # Arrow ingest is a prepared bulk insert: ~1M rows/s, vs far slower executemany.
            cur.adbc_ingest(table, frame.to_arrow(), mode="append")
        conn.commit()
        cur.close()


def _write_postgres(url: str, tables: Mapping[str, pl.DataFrame], primary_keys: Mapping[str, str]) -> None:
    import adbc_driver_postgresql.dbapi as pg_adbc

    with pg_adbc.connect(url) as conn:
        cur = conn.cursor()
        for table in reversed(list(tables)):
            cur.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        for table, frame in tables.items():
            # ADBC ingest uses COPY; the primary key is added afterwards because building the index
            # once is cheaper than maintaining it row by row.
            key = primary_keys.get(table)
            cur.execute(_create_table_sql(table, frame, key, primary_key=False, binary="BYTEA"))
            for column in (c for c, t in frame.schema.items() if t == pl.Binary()):
                # Uncompressed out of line: blob_chunks' slices then read only their own bytes.
                cur.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET STORAGE EXTERNAL')
            cur.adbc_ingest(table, frame.to_arrow(), mode="append")
            if key:
                cur.execute(f'ALTER TABLE "{table}" ADD PRIMARY KEY ("{key}")')
        conn.commit()
        cur.close()
