"""Documents with their files: legacy `documents` rows (referral letters, signed consents, outside lab
reports, scans), each naming a file or holding its bytes in a BLOB column, to FHIR DocumentReference,
keyed by document_id.

A document's bytes are a file in the legacy document folder (`file_path`, relative to LEGACY_FILES_DIR,
by default the folder beside the database; or absolute) or a BLOB in the row's `file_content` (the lab
interface's reports, in a SQL database: read one at a time, never the whole column at once). Either
becomes a Binary holding the bytes; the DocumentReference's `content[0].attachment` carries its
`contentType`, `size`, `hash` (SHA-1, base64) and `url` (`Binary/<id>`, written by the loader when it
uploads the bytes: elements/files.py). The bytes are uploaded once per content (two rows sharing one file
share one Binary), a rerun uploads nothing, changed bytes are uploaded once more and the
DocumentReference follows. Every document goes up as a Binary, short text letters too: one way for every
document, the text kept as the clinic filed it, and the DocumentReference small whatever the file.

Quarantined, with the rule, alike for a file and a BLOB: a file named but not on disk, or a row with
neither a file nor bytes (`missing_file`), empty bytes (`empty_file`: an empty scan is a failed scan, for a
person to find), a content type the clinic does not allow or bytes over the size limit
(`disallowed_content_type`, `file_too_large`; ALLOWED_FILE_TYPES, MAX_FILE_BYTES), an unknown patient or
encounter, another patient's encounter, and an impossible or future date; and at load time, bytes gone
or changed since the frame was built (`missing_file`, `file_changed`: the next run loads them). The
document type maps to LOINC through terminology/document_types.csv where it can (`code_mapped`).
"""

import base64
import hashlib
from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    CONDITIONAL_REFERENCE,
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    expected_reference,
    frame_columns,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import text
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    present,
    reference,
)
from migration_assets.elements.files import (
    LEGACY_FILE_URL_PREFIX,
    blob_url,
    file_facts_frame,
    file_limits,
    resolved_path,
)
from migration_assets.profiles.seed_ehr.sample_data import BLOB_COLUMN, UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import LOINC, read_map

REGISTER_NOTES = {
    "doc_type": "type: local coding always, LOINC document type where terminology/document_types.csv maps it",
    "title": "description and attachment.title",
    "file_path": "the file (relative to LEGACY_FILES_DIR, else the folder beside the database), uploaded once "
    f"per content as a Binary: attachment.url Binary/<id>, size, hash (SHA-1 base64); no file_path: the bytes "
    f"in the BLOB column {BLOB_COLUMN} (SQL sources; read one at a time), uploaded the same way; missing, empty "
    "or too large file or BLOB quarantined",
    "content_type": "attachment.contentType; a type not in ALLOWED_FILE_TYPES quarantined",
    "created_date": "attachment.creation at its precision; impossible or future date quarantined",
    "encounter_id": "context.encounter when given; unknown or another patient's: quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    encounters = (
        tables["encounters"]
        .unique("encounter_id", keep="first")
        .select("encounter_id", encounter_patient="patient_id", encounter_in_source=pl.lit(True))
    )
    documents = _with_blob_facts(tables["documents"]).with_columns(
        local_path=pl.col("file_path").str.strip_chars().map_elements(resolved_path, return_dtype=pl.String)
    )
    # Each distinct file is read once, however many rows name it (not at all when its facts are cached).
    facts = file_facts_frame(documents["local_path"].drop_nulls().unique().to_list()).rename(
        {"file_path": "local_path"}
    )
    blob_size, blob_sha1 = pl.col(f"{BLOB_COLUMN}_size"), pl.col(f"{BLOB_COLUMN}_sha1")
    return (
        documents.join(facts, on="local_path", how="left", maintain_order="left")
        .with_columns(
            in_blob=blob_size.is_not_null(),
            file_exists=pl.when(blob_size.is_not_null()).then(True).otherwise(pl.col("file_exists")),
            file_size=pl.coalesce(blob_size, pl.col("file_size")),
            file_sha1=pl.coalesce(blob_sha1, pl.col("file_sha1")),
        )
        .drop(f"{BLOB_COLUMN}_size", f"{BLOB_COLUMN}_sha1")
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .join(encounters, on="encounter_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("documents"))
    )


def _with_blob_facts(documents: pl.DataFrame) -> pl.DataFrame:
    """The BLOB column as its size and SHA-1: a SQL source reads it so (source.py), never in bulk; tables
    built in memory hold the bytes themselves; a table without the column has no BLOBs."""
    size, sha1 = f"{BLOB_COLUMN}_size", f"{BLOB_COLUMN}_sha1"
    if size in documents.columns:
        return documents
    if BLOB_COLUMN not in documents.columns:
        return documents.with_columns(pl.lit(None, pl.Int64).alias(size), pl.lit(None, pl.String).alias(sha1))
    content = pl.col(BLOB_COLUMN).cast(pl.Binary)
    return documents.with_columns(
        content.bin.size().cast(pl.Int64).alias(size),
        content.map_elements(
            lambda data: base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"), return_dtype=pl.String
        ).alias(sha1),
    ).drop(BLOB_COLUMN)


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    encounter_system = system.identifier_system("encounter")
    document_system = system.identifier_system("document")
    max_bytes, allowed_types = file_limits()
    types = (
        read_map("document_types")
        .lazy()
        .rename({"local_code": "doc_type", "code": "loinc_code", "display": "loinc_display"})
    )
    rows = source.with_columns(
        doc_type=text(pl.col("doc_type")),
        content_type=text(pl.col("content_type")),
        created_date=text(pl.col("created_date")),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        encounter_reference=conditional_reference("Encounter", encounter_system, pl.col("encounter_id")),
    ).join(types, on="doc_type", how="left", maintain_order="left")
    attachment = pl.struct(
        pl.col("content_type").alias("contentType"),
        pl.when(pl.col("in_blob"))
        .then(blob_url("documents", BLOB_COLUMN, "document_id"))
        .otherwise(pl.lit(LEGACY_FILE_URL_PREFIX) + pl.col("local_path"))
        .alias("url"),
        pl.col("file_size").alias("size"),
        pl.col("file_sha1").alias("hash"),
        text(pl.col("title")).alias("title"),
        pl.col("created_date").alias("creation"),
    )
    resource = pl.struct(
        pl.lit("DocumentReference").alias("resourceType"),
        identifier(document_system, pl.col("document_id")).alias("identifier"),
        pl.lit("current").alias("status"),
        codeable_concept(
            coding(system.code_system("document-type"), pl.col("doc_type")),
            coding(LOINC, pl.col("loinc_code"), pl.col("loinc_display")),
        ).alias("type"),
        reference(pl.col("subject_reference")).alias("subject"),
        text(pl.col("title")).alias("description"),
        pl.concat_list(pl.struct(attachment.alias("attachment"))).alias("content"),
        pl.struct(
            present(pl.when(pl.col("encounter_id").is_not_null()).then(reference(pl.col("encounter_reference")))).alias(
                "encounter"
            )
        ).alias("context"),
    )
    frame = rows.select(
        frame_columns(
            "DocumentReference",
            document_system,
            pl.col("document_id"),
            resource,
            references=[
                expected_reference("subject", "Patient", patient_system, pl.col("patient_id")),
                pl.when(pl.col("encounter_id").is_not_null()).then(
                    expected_reference("context.encounter.0", "Encounter", encounter_system, pl.col("encounter_id"))
                ),
            ],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=pl.col("subject_reference"),
        created_date=pl.col("created_date"),
        content_type=pl.col("content_type"),
        file_size=pl.col("file_size"),
        code_mapped=pl.col("loinc_code").is_not_null(),
        file_exists=pl.col("file_exists").fill_null(False),
        encounter_id=pl.col("encounter_id"),
        patient_in_source=pl.col("patient_in_source"),
        encounter_in_source=pl.col("encounter_in_source"),
        other_patients_encounter=pl.col("encounter_patient").is_not_null()
        & (pl.col("encounter_patient") != pl.col("patient_id")),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine_orphans(frame, "encounter_id", "encounters", "encounter_in_source", required=False)
    frame = quarantine(
        frame,
        "mismatched_reference",
        pl.col("other_patients_encounter"),
        "encounter_id names another patient's encounter",
    )
    frame = quarantine(
        frame,
        "missing_file",
        ~pl.col("file_exists"),
        f"the file named in file_path is not on disk (or the row names no file and has no {BLOB_COLUMN})",
    )
    frame = quarantine(frame, "empty_file", pl.col("file_size") == 0, "the document's file or BLOB is empty")
    frame = quarantine(
        frame,
        "disallowed_content_type",
        ~pl.col("content_type").is_in(sorted(allowed_types)),
        "content_type is not one the clinic allows (ALLOWED_FILE_TYPES)",
    )
    frame = quarantine(
        frame,
        "file_too_large",
        pl.col("file_size") > max_bytes,
        f"the file is over the limit of {max_bytes} bytes (MAX_FILE_BYTES)",
    )
    frame = quarantine(frame, "invalid_date", invalid_date("created_date"), "created_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("created_date"), "created_date lies in the future")
    frame = frame.with_columns(pl.col("references").list.filter(pl.element().is_not_null()))
    return frame.drop(
        "file_exists", "encounter_id", "patient_in_source", "encounter_in_source", "other_patients_encounter"
    )


class DocumentReferenceFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    created_date: str = pa.Field(str_matches=DATE)


ELEMENT = DataElement(
    name="documents",
    description="Documents with their files to FHIR DocumentReference, each file uploaded once as a Binary "
    "(contentType, size, SHA-1 hash).",
    mapping_version="1.0.0",
    source_tables={"documents": "document_id", "patients": "patient_id", "encounters": "encounter_id"},
    requires=("patients", "encounters"),
    extract=extract,
    transform=transform,
    schemas={"DocumentReference": DocumentReferenceFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
