"""Mapping tests for documents: the DocumentReference of a file or a BLOB (its size, SHA-1 and the legacy
url the loader turns into a Binary), the files and BLOBs quarantined with their rule, and a sample
database that keeps working when copied elsewhere. Files live in tmp_path."""

import base64
import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.files import legacy_files
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import (
    BLOB_COLUMN,
    TABLE_COLUMNS,
    build_sample_tables,
    generate_sample_ehr,
    write_sample_files,
)
from migration_assets.source import blob_chunks, read_table

BASE = "https://ehr.example-clinic.org/fhir"
SYSTEM = SourceSystem(BASE)


def frame_of(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    element = PROFILE.element("documents")
    return build_frame(element, element.extract(tables), SYSTEM)


def documents(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dict.fromkeys(TABLE_COLUMNS["documents"], pl.String), orient="row")


def test_a_document_and_the_files_that_are_quarantined(tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_FILE_BYTES", "1000")
    letter = b"Dear colleague,\nplease see Mr Doe.\n"
    (tmp_path / "letter.txt").write_bytes(letter)
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "big.pdf").write_bytes(b"%PDF" + b"0" * 2000)
    (tmp_path / "macro.docm").write_bytes(b"PK")
    tables = build_sample_tables(patients=2)
    tables["documents"] = documents(
        [
            (
                "D1",
                "P001",
                "E001",
                "referral",
                "Referral letter",
                str(tmp_path / "letter.txt"),
                "text/plain",
                "2023-06-15",
            ),
            ("D2", "P001", None, "scan", "Scan", str(tmp_path / "empty.pdf"), "application/pdf", "2023-06-15"),
            ("D3", "P001", None, "scan", "Scan", str(tmp_path / "gone.pdf"), "application/pdf", "2023-06-15"),
            ("D4", "P001", None, "scan", "Scan", str(tmp_path / "big.pdf"), "application/pdf", "2023-06-15"),
            ("D5", "P001", None, "scan", "Scan", str(tmp_path / "macro.docm"), "application/vnd.ms-word", "2023-06-15"),
            ("D6", "P404", None, "scan", "Scan", str(tmp_path / "letter.txt"), "text/plain", "2023-06-15"),
            ("D7", "P002", "E001", "scan", "Scan", str(tmp_path / "letter.txt"), "text/plain", "2023-06-15"),
            ("D8", "P002", None, "referral", "Copy", str(tmp_path / "letter.txt"), "text/plain", "2023-06-31"),
        ]
    )
    frame = frame_of(tables)
    written = json.loads(frame.filter(pl.col("unit_key") == "D1")["resource"].item())
    assert written.pop("meta") == {"source": f"{BASE}/mapping/documents/1.0.0"}
    assert written == {
        "resourceType": "DocumentReference",
        "identifier": [{"system": f"{BASE}/identifier/document", "value": "D1"}],
        "status": "current",
        "type": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/document-type", "code": "referral"},
                {"system": "http://loinc.org", "code": "57133-1", "display": "Referral note"},
            ]
        },
        "subject": {"reference": f"Patient?identifier={BASE}/identifier/patient|P001"},
        "description": "Referral letter",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "url": f"urn:legacy-file:{tmp_path / 'letter.txt'}",
                    "size": len(letter),
                    "hash": base64.b64encode(hashlib.sha1(letter).digest()).decode(),
                    "title": "Referral letter",
                    "creation": "2023-06-15",
                }
            }
        ],
        "context": {"encounter": [{"reference": f"Encounter?identifier={BASE}/identifier/encounter|E001"}]},
    }
    rules = {key: rule for key, rule in zip(frame["unit_key"], frame["quarantine_rule"], strict=True) if rule}
    assert rules == {
        "D2": "empty_file",
        "D3": "missing_file",
        "D4": "file_too_large",
        "D5": "disallowed_content_type",
        "D6": "orphan_reference",
        "D7": "mismatched_reference",
        "D8": "invalid_date",
    }


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> tuple[dict[str, pl.DataFrame], Path]:
    folder = tmp_path_factory.mktemp("legacy_files")
    return write_sample_files(build_sample_tables(patients=1000), folder), folder


def test_the_sample_files_are_real_and_only_the_odd_ones_are_quarantined(sample_files, monkeypatch):
    tables, folder = sample_files
    table = tables["documents"]
    # The table holds paths relative to the document folder, never the generating machine's.
    assert not table["file_path"].str.starts_with("/").any()
    monkeypatch.setenv("LEGACY_FILES_DIR", str(folder))
    frame = frame_of(tables)
    rules = frame.filter(pl.col("quarantine_rule").is_not_null())
    assert sorted(rules["quarantine_rule"]) == ["empty_file", "missing_file"]
    kinds = {}
    for row in table.iter_rows(named=True):
        if not row["file_path"].endswith("-lost.pdf"):
            with open(folder / row["file_path"], "rb") as handle:
                kinds.setdefault(row["content_type"], handle.read(8))
    assert kinds["application/pdf"].startswith(b"%PDF-1.4")
    assert kinds["image/png"] == b"\x89PNG\r\n\x1a\n"
    assert set(kinds) == {"application/pdf", "image/png", "text/plain"}
    shared = table.filter(pl.col("file_path").is_duplicated())
    assert shared.height == 2 and shared["patient_id"].n_unique() == 1


def test_a_copied_sample_database_keeps_its_files_and_blobs(tmp_path):
    made = tmp_path / "made"
    generate_sample_ehr(f"sqlite:///{made / 'legacy.db'}", patients=200)
    # Moved to another folder (another machine): the database and its document folder beside it.
    moved = tmp_path / "elsewhere"
    shutil.copytree(made, moved)
    shutil.rmtree(made)
    url = f"sqlite:///{moved / 'legacy.db'}"
    element = PROFILE.element("documents")
    tables = {table: read_table(url, table) for table in element.source_tables}
    documents = tables["documents"]
    assert BLOB_COLUMN not in documents.columns  # never read in bulk: its size and SHA-1 instead
    in_database = documents.filter(pl.col(f"{BLOB_COLUMN}_size").is_not_null())
    assert in_database.height > 0 and in_database["file_path"].is_null().all()
    assert set(in_database["content_type"]) == {"application/pdf"}
    with legacy_files(url):
        frame = build_frame(element, element.extract(tables), SYSTEM)
    assert sorted(frame.filter(pl.col("quarantine_rule").is_not_null())["quarantine_rule"]) == [
        "empty_file",
        "missing_file",
    ]
    key = in_database["document_id"][0]
    attachment = json.loads(frame.filter(pl.col("unit_key") == key)["resource"].item())["content"][0]["attachment"]
    data = b"".join(blob_chunks(url, "documents", BLOB_COLUMN, "document_id", key) or [])
    assert data.startswith(b"%PDF-1.4")
    assert attachment["url"] == f"urn:legacy-blob:documents/{BLOB_COLUMN}/document_id/{key}"
    assert (attachment["size"], attachment["hash"]) == (
        len(data),
        base64.b64encode(hashlib.sha1(data).digest()).decode(),
    )
    a_file = json.loads(
        frame.filter(
            pl.col("quarantine_rule").is_null() & ~pl.col("unit_key").is_in(in_database["document_id"].implode())
        )["resource"][0]
    )
    assert a_file["content"][0]["attachment"]["url"].startswith(f"urn:legacy-file:{moved / 'legacy_files'}/docs/")


def test_blobs_are_quarantined_like_files(monkeypatch):
    monkeypatch.setenv("MAX_FILE_BYTES", "1000")
    tables = build_sample_tables(patients=2)
    rows = [
        ("B1", b"Dear colleague,\n", "text/plain"),
        ("B2", b"", "application/pdf"),
        ("B3", b"%PDF" + b"0" * 2000, "application/pdf"),
        ("B4", b"PK", "application/vnd.ms-word"),
        ("B5", None, "application/pdf"),
    ]
    tables["documents"] = documents(
        [(key, "P001", None, "scan", "Scan", None, kind, "2023-06-15") for key, _, kind in rows]
    ).with_columns(pl.Series(BLOB_COLUMN, [data for _, data, _ in rows], dtype=pl.Binary))
    frame = frame_of(tables)
    rules = dict(zip(frame["unit_key"], frame["quarantine_rule"], strict=True))
    assert rules == {
        "B1": None,
        "B2": "empty_file",
        "B3": "file_too_large",
        "B4": "disallowed_content_type",
        "B5": "missing_file",
    }
    attachment = json.loads(frame.filter(pl.col("unit_key") == "B1")["resource"].item())["content"][0]["attachment"]
    assert attachment["url"] == f"urn:legacy-blob:documents/{BLOB_COLUMN}/document_id/B1"
    assert attachment["size"] == len(b"Dear colleague,\n")
