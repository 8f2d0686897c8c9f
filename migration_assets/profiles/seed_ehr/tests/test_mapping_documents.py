"""Mapping tests for documents: the DocumentReference of a file (its size, SHA-1 and the legacy-file url
the loader turns into a Binary), and the files quarantined with their rule. Files live in tmp_path."""

import base64
import hashlib
import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import (
    TABLE_COLUMNS,
    build_sample_tables,
    write_sample_files,
)

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
def sample_with_files(tmp_path_factory) -> dict[str, pl.DataFrame]:
    return write_sample_files(build_sample_tables(patients=1000), tmp_path_factory.mktemp("legacy_files"))


def test_the_sample_files_are_real_and_only_the_odd_ones_are_quarantined(sample_with_files):
    table = sample_with_files["documents"]
    frame = frame_of(sample_with_files)
    rules = frame.filter(pl.col("quarantine_rule").is_not_null())
    assert sorted(rules["quarantine_rule"]) == ["empty_file", "missing_file"]
    kinds = {}
    for row in table.iter_rows(named=True):
        if not row["file_path"].endswith("-lost.pdf"):
            with open(row["file_path"], "rb") as handle:
                kinds.setdefault(row["content_type"], handle.read(8))
    assert kinds["application/pdf"].startswith(b"%PDF-1.4")
    assert kinds["image/png"] == b"\x89PNG\r\n\x1a\n"
    assert set(kinds) == {"application/pdf", "image/png", "text/plain"}
    shared = table.filter(pl.col("file_path").is_duplicated())
    assert shared.height == 2 and shared["patient_id"].n_unique() == 1
