"""Documents with their files through the real load path (migrate) into the local Medplum server: each
DocumentReference's attachment points at a Binary holding the file's bytes; a rerun uploads and sends
nothing; a changed file is uploaded once more and its DocumentReference follows; a run killed between
the upload and the DocumentReference leaves a booked Binary that the next run reuses. The same for bytes
kept in a BLOB column (SQLite and PostgreSQL); files refused at load time become quarantined units and
the books balance; a rerun reads no unchanged file (the facts cache), and a touched file uploads nothing."""

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements import files as elements_files
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.files import DEFAULT_ALLOWED_TYPES, legacy_files
from migration_assets.ledger.files import FileHashes, UploadedFiles
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum.client import MedplumClient
from migration_assets.pipeline import attachments
from migration_assets.pipeline.loader import LoadSettings, migrate
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables
from migration_assets.source import read_table, write_tables
from migration_assets.verify.books import accounting

pytestmark = pytest.mark.integration  # every test here talks to the local Medplum server

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
SETTINGS = LoadSettings(batch_size=10)


def documents_table(folder: Path, rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """(document id, patient, file name, content type) rows, files under `folder`."""
    return pl.DataFrame(
        [
            (key, patient, None, "referral", "Referral letter", str(folder / name), kind, "2023-06-15")
            for key, patient, name, kind in rows
        ],
        schema=dict.fromkeys(TABLE_COLUMNS["documents"], pl.String),
        orient="row",
    )


def load(
    client: MedplumClient, manifest: Manifest, element: str, tables: dict[str, pl.DataFrame], run: str
) -> dict[str, int]:
    chosen = PROFILE.element(element)
    frame = build_frame(chosen, chosen.extract(tables), SYSTEM)
    return migrate(client, manifest, run, chosen, frame, "memory://test", SETTINGS).counts


def read_bytes(client: MedplumClient, reference: str) -> bytes:
    answer = client.http.get(
        client.fhir_base + reference, headers={"Authorization": f"Bearer {client.bearer()}", "Accept": "*/*"}
    )
    assert answer.status_code == 200
    return answer.content


def attachment_of(client: MedplumClient, document_id: str) -> dict:
    found = list(
        client.search("DocumentReference", {"identifier": f"{SYSTEM.identifier_system('document')}|{document_id}"})
    )
    assert len(found) == 1
    return found[0]["content"][0]["attachment"]


def test_documents_load_once_follow_a_changed_file_and_survive_a_kill(local_medplum, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("Referral of P001 to cardiology.\n")
    (files / "shared.pdf").write_bytes(b"%PDF-1.4\n% consent\n%%EOF\n")
    tables = build_sample_tables(patients=2)
    tables["documents"] = documents_table(
        files,
        [
            ("D1", "P001", "a.txt", "text/plain"),
            ("D2", "P002", "shared.pdf", "application/pdf"),
            ("D3", "P002", "shared.pdf", "application/pdf"),
        ],
    )
    manifest_url = f"sqlite:///{tmp_path / 'manifest.db'}"
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(manifest_url, client.target.key) as manifest,
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        for element in ("patients", "practitioners", "encounters"):
            load(client, manifest, element, tables, f"run-{element}")
        first = load(client, manifest, "documents", tables, "docs-1")
        assert (first["created"], first["failed"], books.count()) == (3, 0, 2)  # two rows, one file: one Binary
        a = attachment_of(client, "D1")
        data = (files / "a.txt").read_bytes()
        assert (a["contentType"], a["size"]) == ("text/plain", len(data))
        assert a["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
        assert a["url"].startswith("Binary/") and read_bytes(client, a["url"]) == data
        assert attachment_of(client, "D2")["url"] == attachment_of(client, "D3")["url"]

        rerun = load(client, manifest, "documents", tables, "docs-2")
        assert (rerun["sent"], books.count()) == (0, 2)

        (files / "a.txt").write_text("Referral of P001 to cardiology, second version.\n")
        changed = load(client, manifest, "documents", tables, "docs-3")
        assert (changed["sent"], changed["updated"], books.count()) == (1, 1, 3)
        followed = attachment_of(client, "D1")
        assert followed["url"] != a["url"] and read_bytes(client, followed["url"]) == (files / "a.txt").read_bytes()

    # A run killed after uploading D4's file and before its DocumentReference was written: the one
    # fault injected, the bundle submission replaced by the process's death.
    (files / "late.png").write_bytes(b"\x89PNG\r\n\x1a\n late scan")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import os, sys
        import polars as pl
        from migration_assets.elements.base import SourceSystem, build_frame
        from migration_assets.ledger.manifest import Manifest
        from migration_assets.medplum.client import MedplumClient
        from migration_assets.pipeline.loader import LoadSettings, migrate
        from migration_assets.profiles.seed_ehr import PROFILE
        base, cid, secret, manifest_url, tables_dir = sys.argv[1:6]
        tables = {path[:-8]: pl.read_parquet(os.path.join(tables_dir, path)) for path in os.listdir(tables_dir)}
        MedplumClient.submit_batch = lambda *args, **kwargs: os._exit(9)
        element = PROFILE.element("documents")
        frame = build_frame(element, element.extract(tables), SourceSystem("https://ehr.example-clinic.org/fhir"))
        with MedplumClient(base, cid, secret) as client, Manifest(manifest_url, client.target.key) as manifest:
            migrate(client, manifest, "docs-killed", element, frame, "memory://test", LoadSettings(batch_size=10))
    """),
            local_medplum.base_url,
            local_medplum.client_id,
            local_medplum.client_secret,
            manifest_url,
            str(_saved(tables, files, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(manifest_url, client.target.key) as manifest,
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        assert books.count() == 4  # the killed run booked the Binary it uploaded
        booked = books.binary_for(hashlib.sha256((files / "late.png").read_bytes()).hexdigest())
        tables["documents"] = pl.concat(
            [tables["documents"], documents_table(files, [("D4", "P001", "late.png", "image/png")])]
        )
        resumed = load(client, manifest, "documents", tables, "docs-4")
        assert (resumed["created"], books.count()) == (1, 4)  # nothing uploaded twice
        assert attachment_of(client, "D4")["url"] == f"Binary/{booked}"


def _saved(tables: dict[str, pl.DataFrame], files: Path, tmp_path: Path) -> Path:
    """The tables with document D4 added, as Parquet files for the killed process."""
    folder = tmp_path / "tables"
    folder.mkdir(exist_ok=True)
    with_late = {
        **tables,
        "documents": pl.concat(
            [tables["documents"], documents_table(files, [("D4", "P001", "late.png", "image/png")])]
        ),
    }
    for name, frame in with_late.items():
        frame.write_parquet(folder / f"{name}.parquet")
    return folder


def migrate_documents(
    client: MedplumClient, manifest: Manifest, tables: dict[str, pl.DataFrame], run: str
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The documents element's frame built and loaded (within the caller's `legacy_files` block)."""
    element = PROFILE.element("documents")
    frame = build_frame(element, element.extract(tables), SYSTEM)
    return frame, migrate(client, manifest, run, element, frame, "memory://test", SETTINGS).counts


def load_prerequisites(client: MedplumClient, manifest: Manifest, tables: dict[str, pl.DataFrame]) -> None:
    for element in ("patients", "practitioners", "encounters"):
        load(client, manifest, element, tables, f"run-{element}")


def blob_documents(rows: list[tuple[str, str, bytes | None, str]]) -> pl.DataFrame:
    """(document id, patient, bytes kept in the row's BLOB column, content type) rows, no file."""
    return documents_table(Path("/unused"), [(key, patient, "x", kind) for key, patient, _, kind in rows]).with_columns(
        file_path=pl.lit(None, pl.String), file_content=pl.Series([data for _, _, data, _ in rows], dtype=pl.Binary)
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_blob_documents_upload_once_and_follow_changed_bytes(local_medplum, tmp_path, request, database):
    url = (
        f"sqlite:///{tmp_path / 'legacy.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_schema_url")
    )
    b1, b2, b3 = (f"{database}-B{number}" for number in (1, 2, 3))  # one server for the session: own keys
    consent = b"%PDF-1.4\n% consent kept in the database\n%%EOF\n"
    tables = build_sample_tables(patients=2)
    tables["documents"] = blob_documents(
        [
            (b1, "P001", consent, "application/pdf"),
            (b2, "P002", consent, "application/pdf"),  # the same bytes in two rows: one Binary
            (b3, "P002", b"", "application/pdf"),  # an empty BLOB: quarantined like an empty file
        ]
    )
    write_tables(url, tables, PROFILE.primary_keys())
    element = PROFILE.element("documents")
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(f"sqlite:///{tmp_path / 'manifest.db'}", client.target.key) as manifest,
        legacy_files(url),
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        load_prerequisites(client, manifest, tables)

        def from_source() -> dict[str, pl.DataFrame]:
            return {table: read_table(url, table) for table in element.source_tables}

        frame, first = migrate_documents(client, manifest, from_source(), "blobs-1")
        assert (first["created"], first["quarantined"], books.count()) == (2, 1, 1)
        assert frame.filter(pl.col("unit_key") == b3)["quarantine_rule"].item() == "empty_file"
        one = attachment_of(client, b1)
        assert (one["contentType"], one["size"]) == ("application/pdf", len(consent))
        assert one["hash"] == base64.b64encode(hashlib.sha1(consent).digest()).decode()
        assert read_bytes(client, one["url"]) == consent and attachment_of(client, b2)["url"] == one["url"]

        _, rerun = migrate_documents(client, manifest, from_source(), "blobs-2")
        assert (rerun["sent"], books.count()) == (0, 1)

        signed = b"%PDF-1.4\n% consent kept in the database, signed\n%%EOF\n"
        tables["documents"] = tables["documents"].with_columns(
            file_content=pl.when(pl.col("document_id") == b1).then(pl.lit(signed)).otherwise(pl.col("file_content"))
        )
        write_tables(url, tables, PROFILE.primary_keys())
        _, changed = migrate_documents(client, manifest, from_source(), "blobs-3")
        assert (changed["sent"], changed["updated"], books.count()) == (1, 1, 2)
        followed = attachment_of(client, b1)
        assert followed["url"] != one["url"] and read_bytes(client, followed["url"]) == signed
        assert attachment_of(client, b2)["url"] == one["url"]


def test_files_refused_at_load_time_are_quarantined_and_the_books_balance(local_medplum, tmp_path, monkeypatch):
    files = tmp_path / "files"
    files.mkdir()
    for name, data in {
        "vanishes.txt": b"Referral, soon deleted.\n",
        "grows.pdf": b"%PDF-1.4\n% a lab report the clinic will find too large\n%%EOF\n",
        "scan.png": b"\x89PNG\r\n\x1a\n a scan",
        "edited.txt": b"Referral, first version.\n",
        "fine.txt": b"Referral.\n",
    }.items():
        (files / name).write_bytes(data)
    tables = build_sample_tables(patients=2)
    tables["documents"] = documents_table(
        files,
        [
            ("L1", "P001", "vanishes.txt", "text/plain"),
            ("L2", "P001", "grows.pdf", "application/pdf"),
            ("L3", "P002", "scan.png", "image/png"),
            ("L4", "P002", "edited.txt", "text/plain"),
            ("L5", "P002", "fine.txt", "text/plain"),
        ],
    )
    element = PROFILE.element("documents")
    frame = build_frame(element, element.extract(tables), SYSTEM)
    assert frame["quarantine_rule"].is_null().all()
    # Between the transform and the load: one file deleted, one edited, and the clinic's limits tightened.
    (files / "vanishes.txt").unlink()
    (files / "edited.txt").write_bytes(b"Referral, second version.\n")
    monkeypatch.setenv("MAX_FILE_BYTES", "40")
    monkeypatch.setenv("ALLOWED_FILE_TYPES", "text/plain,application/pdf")
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(f"sqlite:///{tmp_path / 'manifest.db'}", client.target.key) as manifest,
    ):
        load_prerequisites(client, manifest, tables)
        counts = migrate(client, manifest, "refused", element, frame, "memory://test", SETTINGS).counts
        assert (counts["created"], counts["quarantined"], counts["failed"]) == (1, 4, 0)
        units = manifest.units("documents")
        rules = {key: (rule, reason) for key, rule, reason in units.select("unit_key", "rule", "reason").iter_rows()}
        assert {key: rule for key, (rule, _) in rules.items()} == {
            "L1": "missing_file",
            "L2": "file_too_large",
            "L3": "disallowed_content_type",
            "L4": "file_changed",
            "L5": None,
        }
        assert all(reason.startswith("at load time: ") for rule, reason in rules.values() if rule)
        books = accounting(frame, units)
        assert books.balanced and (books.dispositions["successful"], books.dispositions["quarantined"]) == (1, 4)
        assert UploadedFiles(manifest.engine, client.target.key).count() == 1


def test_a_rerun_reads_no_file_and_a_touched_file_uploads_nothing(local_medplum, tmp_path, monkeypatch):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("Referral of P001.\n")
    (files / "b.pdf").write_bytes(b"%PDF-1.4\n% consent\n%%EOF\n")
    tables = build_sample_tables(patients=2)
    tables["documents"] = documents_table(
        files, [("R1", "P001", "a.txt", "text/plain"), ("R2", "P002", "b.pdf", "application/pdf")]
    )
    reads: list[str] = []
    unread = elements_files.file_chunks

    def counted(path: Path) -> Iterator[bytes]:
        reads.append(path.name)
        return unread(path)

    monkeypatch.setattr(elements_files, "file_chunks", counted)
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(f"sqlite:///{tmp_path / 'manifest.db'}", client.target.key) as manifest,
        legacy_files(None, FileHashes(manifest.engine)),
    ):
        books = UploadedFiles(manifest.engine, client.target.key)
        load_prerequisites(client, manifest, tables)
        _, first = migrate_documents(client, manifest, tables, "cache-1")
        # Each file read twice: hashed by the extract, then streamed to its Binary (its facts cached).
        assert first["created"] == 2 and sorted(reads) == ["a.txt", "a.txt", "b.pdf", "b.pdf"]

        reads.clear()
        _, rerun = migrate_documents(client, manifest, tables, "cache-2")
        assert (rerun["sent"], reads) == (0, [])

        stat = (files / "a.txt").stat()
        os.utime(files / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, same bytes
        _, touched = migrate_documents(client, manifest, tables, "cache-3")
        assert (touched["sent"], reads, books.count()) == (0, ["a.txt"], 2)

        reads.clear()
        (files / "b.pdf").write_bytes(b"%PDF-1.4\n% consent, signed\n%%EOF\n")  # another size: hashed again
        _, changed = migrate_documents(client, manifest, tables, "cache-4")
        assert (changed["updated"], sorted(reads), books.count()) == (1, ["b.pdf", "b.pdf"], 3)


def test_the_sample_documents_load_through_dagster_with_every_check_green(platform_factory, monkeypatch):
    # The sample as `make demo` writes it: files under paths relative to the folder beside the database,
    # the lab reports as BLOBs; the source named only by the Dagster resource.
    monkeypatch.delenv("LEGACY_DB_URL", raising=False)
    monkeypatch.delenv("LEGACY_FILES_DIR", raising=False)
    platform = platform_factory.new(patients=150)
    for element in ("patients", "practitioners", "encounters"):
        assert platform.run(element).ok
    first = platform.run("documents")
    assert first.ok, (first.error, first.failure_messages)
    assert first.counts["created"] > 0 and first.counts["failed"] == 0
    assert first.counts["quarantined"] == 2  # the sample's empty file and its lost one
    with platform.client() as client, platform.manifest() as manifest:
        uploaded = UploadedFiles(manifest.engine, client.target.key).count()
        legacy = read_table(platform.source_url, "documents")
        in_database = legacy.filter(pl.col("file_content_size").is_not_null())["document_id"].to_list()
        assert in_database and not legacy["file_path"].drop_nulls().str.starts_with("/").any()
        for key in in_database[:3]:
            assert attachment_of(client, key)["url"].startswith("Binary/")
    again = platform.run("documents")
    assert again.ok and again.counts["sent"] == 0
    with platform.client() as client, platform.manifest() as manifest:
        assert UploadedFiles(manifest.engine, client.target.key).count() == uploaded


def test_documents_refused_at_load_time_leave_every_check_green(platform_factory, monkeypatch):
    monkeypatch.delenv("LEGACY_DB_URL", raising=False)
    platform = platform_factory.new(patients=150)
    for element in ("patients", "practitioners", "encounters"):
        assert platform.run(element).ok
    # The clinic's size limit lowered after the frame was built: the loader (alone) sees 2,000 bytes, so
    # the sample's PDFs and scans are refused at load time, its plain-text letters go up.
    monkeypatch.setattr(attachments, "file_limits", lambda: (2_000, DEFAULT_ALLOWED_TYPES))
    summary = platform.run("documents")
    assert summary.ok, (summary.error, summary.failure_messages)
    with platform.manifest() as manifest:
        units = manifest.units("documents")
    refused = units.filter(pl.col("rule") == "file_too_large")
    assert refused.height > 0 and refused["reason"].str.starts_with("at load time: ").all()
    assert summary.counts["quarantined"] == refused.height + 2  # and the sample's empty and lost files
    assert units.filter(pl.col("disposition") == "successful").height == summary.counts["created"] > 0
    assert "accounting_balanced" in summary.checks_passed and "reconciliation" in summary.checks_passed
