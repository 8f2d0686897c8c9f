"""Chart review and the dual-write comparison show seed_ehr's documents (their files and BLOBs) and
immunizations beside the rest: on the local Medplum server and a real Dagster instance; runs in a seed_ehr
session (migration_assets_tests/conftest.py, SEED_EHR_TESTS)."""

import json

import pytest

from migration_assets.active import get_element
from migration_assets.adoption.chart_review import build_chart_review
from migration_assets.adoption.dual_write import compare_stores
from migration_assets.adoption.sync import legacy_frame, read_legacy
from migration_assets.elements.base import SourceSystem
from migration_assets_tests.fixtures_platform import PlatformFactory

pytestmark = pytest.mark.integration  # starts a server and runs against it


@pytest.fixture
def platform_factory(tmp_path):
    """The platform tests' factory (migration_assets_tests/fixtures_platform.py), on this profile's sample."""
    factory = PlatformFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def test_chart_review_and_the_dual_write_check_show_documents_and_immunizations(platform_factory, tmp_path):
    platform = platform_factory.new(patients=30)  # lab reports kept as BLOBs, the other documents as files
    url, system = platform.source_url, SourceSystem("https://ehr.example-clinic.org/fhir")
    frames = {}
    for name in ("patients", "practitioners", "encounters", "immunizations", "documents"):
        assert platform.run(name).ok
        element = get_element(name)
        _, frames[name] = legacy_frame(element, read_legacy(url, element), system, url)
    with platform.client() as client, platform.manifest() as ledger:
        documents = frames["documents"]
        urls = [json.loads(text)["content"][0]["attachment"]["url"] for text in documents["resource"]]
        assert any(u.startswith("urn:legacy-blob:") for u in urls) and any(
            u.startswith("urn:legacy-file:") for u in urls
        )

        # In agreement: the legacy file or BLOB against the Binary, compared on contentType, size and hash.
        report = compare_stores(client, "documents", documents, ledger.units("documents"))
        assert report.passed and report.compared == documents.height, report.discrepancies
        assert compare_stores(client, "immunizations", frames["immunizations"], ledger.units("immunizations")).passed

        # A DocumentReference whose attachment says other bytes than the legacy ones: found, on its hash.
        key = documents["identifier_value"][0]
        (stored,) = client.search("DocumentReference", {"identifier": f"{system.identifier_system('document')}|{key}"})
        stored["content"][0]["attachment"]["hash"] = "2jmj7l5rSw0yVb/vlWAYkK/YBwk="
        answer = client.http.put(
            client.fhir_base + f"DocumentReference/{stored['id']}",
            json=stored,
            headers={"Authorization": f"Bearer {client.bearer()}", "Content-Type": "application/fhir+json"},
        )
        assert answer.status_code == 200
        differs = compare_stores(client, "documents", documents, ledger.units("documents")).discrepancies
        assert differs.select("identifier_value", "kind", "field").rows() == [
            (key, "differs", "content.0.attachment.hash")
        ]

        review = build_chart_review(
            client, ledger, url, system, tmp_path / "review", size=3, seed=5, elements=["immunizations", "documents"]
        )
    pages = [path.read_text() for path in review.pages.values()]
    assert any("<h2>immunizations (" in page and '"resourceType": "Immunization"' in page for page in pages)
    document_pages = [page for page in pages if "<h2>documents (" in page]
    assert document_pages and all("<b>Document</b>" in page for page in document_pages)
    shown = "".join(document_pages)
    assert "<th>hash</th>" in shown and "Binary/" in shown and "file_content_sha1" in shown
