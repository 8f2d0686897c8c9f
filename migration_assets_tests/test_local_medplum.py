"""The local Medplum server behaves like a real Medplum server where the loader depends on it.

Everything runs over real HTTP against medplum_local/server.mjs (see ../shared/MEDPLUM_FACTS.md for
the behaviour matched). Each test uses its own identifier system, so tests share one server safely.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from migration_assets.devtools.local_medplum import (
    LocalMedplum,
    LocalMedplumError,
    running_local_medplum,
    start_local_medplum,
)
from migration_assets_tests.fixtures_local_medplum import fhir_client

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one


def new_system() -> str:
    return f"urn:test:{uuid.uuid4()}"


def patient(system: str, value: str, family: str = "Doe", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": family}],
        **extra,
    }


def esc(value: str) -> str:
    """FHIR search escaping of a literal value."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def search_ids(fhir: httpx.Client, resource_type: str, **params: str) -> list[str]:
    response = fhir.get(resource_type, params=params)
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


def conditional_put(system: str, value: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}?identifier={system}|{esc(value)}"},
    }


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def issue_text(outcome: dict[str, Any]) -> str:
    return " ".join(i.get("details", {}).get("text", "") + i.get("diagnostics", "") for i in outcome["issue"])


# --- auth, health, headers --------------------------------------------------------------------


def test_health_and_client_credentials(local_medplum: LocalMedplum) -> None:
    assert httpx.get(local_medplum.base_url + "healthcheck", trust_env=False).json() == {"ok": True}

    form = httpx.post(
        local_medplum.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": local_medplum.client_id,
            "client_secret": local_medplum.client_secret,
        },
        trust_env=False,
    )
    assert form.status_code == 200
    body = form.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]

    basic = httpx.post(
        local_medplum.token_url,
        data={"grant_type": "client_credentials"},
        auth=(local_medplum.client_id, local_medplum.client_secret),
        trust_env=False,
    )
    assert basic.status_code == 200 and basic.json()["access_token"]

    wrong = httpx.post(
        local_medplum.token_url,
        data={"grant_type": "client_credentials", "client_id": local_medplum.client_id, "client_secret": "x"},
        trust_env=False,
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client"

    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        anonymous = httpx.get(local_medplum.fhir_base_url + "Patient", headers=headers, trust_env=False)
        assert anonymous.status_code == 401
        assert anonymous.json()["resourceType"] == "OperationOutcome"


def test_ratelimit_header_on_every_response(local_medplum: LocalMedplum, fhir: httpx.Client) -> None:
    responses = [
        httpx.get(local_medplum.base_url + "healthcheck", trust_env=False),
        httpx.get(local_medplum.fhir_base_url + "Patient", trust_env=False),  # 401
        fhir.get("Patient", params={"_count": "1"}),
        fhir.get(f"Patient/{uuid.uuid4()}"),  # 404
    ]
    for response in responses:
        header = response.headers["RateLimit"]
        assert '"requests";r=' in header and '"fhirInteractions";r=' in header and ";t=" in header


def test_token_expiry() -> None:
    with running_local_medplum(token_ttl=1) as server:
        token_response = httpx.post(
            server.token_url,
            data={"grant_type": "client_credentials"},
            auth=(server.client_id, server.client_secret),
            trust_env=False,
        )
        assert token_response.json()["expires_in"] == 1
        with fhir_client(server, token_response.json()["access_token"]) as client:
            assert client.get("Patient").status_code == 200
            time.sleep(1.2)
            expired = client.get("Patient")
            assert expired.status_code == 401
            assert expired.json()["resourceType"] == "OperationOutcome"
        with fhir_client(server) as renewed:  # a fresh token works again
            assert renewed.get("Patient").status_code == 200


# --- plain REST ---------------------------------------------------------------------------------


def test_conditional_update_semantics(fhir: httpx.Client) -> None:
    system = new_system()
    url = f"Patient?identifier={system}|p1"

    first = fhir.put(url, json=patient(system, "p1"))
    assert first.status_code == 201, first.text
    created = first.json()

    same = fhir.put(url, json=patient(system, "p1"))
    assert same.status_code == 200
    assert same.json()["id"] == created["id"]
    # Identical content: no new version
    assert same.json()["meta"]["versionId"] == created["meta"]["versionId"]

    changed = fhir.put(url, json=patient(system, "p1", family="Changed"))
    assert changed.status_code == 200
    assert changed.json()["id"] == created["id"]
    assert changed.json()["meta"]["versionId"] != created["meta"]["versionId"]

    history = fhir.get(f"Patient/{created['id']}/_history").json()
    assert history["type"] == "history"
    assert [e["resource"]["name"][0]["family"] for e in history["entry"]] == ["Changed", "Doe"]

    # Conditional create (If-None-Exist): 201 once, then 200 with the existing resource
    header = {"If-None-Exist": f"identifier={system}|p9"}
    made = fhir.post("Patient", json=patient(system, "p9"), headers=header)
    again = fhir.post("Patient", json=patient(system, "p9"), headers=header)
    assert (made.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == made.json()["id"]

    # A plain POST does not check identifiers: now two resources share it, and conditional PUT fails.
    duplicate = fhir.post("Patient", json=patient(system, "p1"))
    assert duplicate.status_code == 201
    assert duplicate.json()["id"] != created["id"]
    ambiguous = fhir.put(url, json=patient(system, "p1"))
    assert ambiguous.status_code in (400, 412)
    assert ambiguous.json()["resourceType"] == "OperationOutcome"


def test_read_update_delete_and_no_create_on_update(fhir: httpx.Client) -> None:
    system = new_system()
    created = fhir.post("Patient", json={**patient(system, "r1"), "id": "client-chosen"})
    assert created.status_code == 201
    resource = created.json()
    assert resource["id"] != "client-chosen"  # the server assigns ids
    assert "Location" in created.headers

    assert fhir.get(f"Patient/{resource['id']}").json()["identifier"][0]["value"] == "r1"

    unknown_id = str(uuid.uuid4())
    missing = fhir.put(f"Patient/{unknown_id}", json={**patient(system, "r2"), "id": unknown_id})
    assert missing.status_code == 404
    assert search_ids(fhir, "Patient", identifier=f"{system}|r2") == []

    updated = fhir.put(f"Patient/{resource['id']}", json={**resource, "gender": "female"})
    assert updated.status_code == 200 and updated.json()["gender"] == "female"

    assert fhir.delete(f"Patient/{resource['id']}").status_code == 200
    assert fhir.get(f"Patient/{resource['id']}").status_code == 404
    assert search_ids(fhir, "Patient", identifier=f"{system}|r1") == []


# --- gap 1: search parameters loaded ------------------------------------------------------------


def test_search_parameters_are_loaded(fhir: httpx.Client) -> None:
    system = new_system()
    family = f"Fam{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        response = fhir.put(
            f"Patient?identifier={system}|s1",
            json=patient(system, "s1", family=family, birthDate="1980-02-03"),
        )
        assert response.status_code in (200, 201)
    # Three conditional PUTs made exactly one resource
    assert len(search_ids(fhir, "Patient", identifier=f"{system}|s1")) == 1
    # Other search parameters work too (the stock repository has none loaded)
    assert len(search_ids(fhir, "Patient", family=family)) == 1
    assert len(search_ids(fhir, "Patient", family=family, birthdate="1980-02-03")) == 1
    assert search_ids(fhir, "Patient", family=family, birthdate="1999-01-01") == []


# --- gap 2: conditional references ----------------------------------------------------------------


def test_conditional_references_resolved_everywhere(fhir: httpx.Client) -> None:
    system = new_system()
    patient_id = fhir.put(f"Patient?identifier={system}|c1", json=patient(system, "c1")).json()["id"]
    conditional = f"Patient?identifier={system}|c1"

    def condition(value: str, reference: str = conditional) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "identifier": [{"system": system, "value": value}],
            "subject": {"reference": reference},
            "code": {"text": "test"},
            "note": [{"text": "by", "authorReference": {"reference": conditional}}],
        }

    # Plain create: resolved everywhere in the resource, not only in `subject`
    plain = fhir.post("Condition", json=condition("k1"))
    assert plain.status_code == 201, plain.text
    assert plain.json()["subject"]["reference"] == f"Patient/{patient_id}"
    assert plain.json()["note"][0]["authorReference"]["reference"] == f"Patient/{patient_id}"

    # Update (conditional PUT)
    put = fhir.put(f"Condition?identifier={system}|k2", json=condition("k2"))
    assert put.status_code == 201
    assert put.json()["subject"]["reference"] == f"Patient/{patient_id}"

    # Batch and transaction
    for kind in ("batch", "transaction"):
        response = fhir.post("", json=bundle(kind, [conditional_put(system, f"{kind}-1", condition(f"{kind}-1"))]))
        assert response.status_code == 200, response.text
        entry = response.json()["entry"][0]
        assert entry["response"]["status"].startswith("201")
        stored = fhir.get(entry["response"]["location"].split("/_history")[0]).json()
        assert stored["subject"]["reference"] == f"Patient/{patient_id}"

    # No match: 400 "did not match any resources" (plain, and for that batch entry only)
    missing = condition("k3", reference=f"Patient?identifier={system}|nobody")
    response = fhir.post("Condition", json=missing)
    assert response.status_code == 400
    assert "did not match any resources" in issue_text(response.json())
    batch = fhir.post(
        "",
        json=bundle(
            "batch",
            [conditional_put(system, "k3", missing), conditional_put(system, "k4", condition("k4"))],
        ),
    ).json()
    assert batch["entry"][0]["response"]["status"].startswith("400")
    assert "did not match any resources" in issue_text(batch["entry"][0]["response"]["outcome"])
    assert batch["entry"][1]["response"]["status"].startswith("201")

    # Several matches: 400 "matched multiple"
    fhir.post("Patient", json=patient(system, "twin"))
    fhir.post("Patient", json=patient(system, "twin"))
    response = fhir.post("Condition", json=condition("k5", reference=f"Patient?identifier={system}|twin"))
    assert response.status_code == 400
    assert "matched multiple" in issue_text(response.json())


# --- gap 3: validation ----------------------------------------------------------------------------


def test_structural_validation_on_create_and_update(fhir: httpx.Client) -> None:
    system = new_system()
    invalid = [
        patient(system, "v1", birthDate="1990-13-45"),  # invalid date
        patient(system, "v1", favouriteColour="blue"),  # unknown property
    ]
    for resource in invalid:
        response = fhir.post("Patient", json=resource)
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
        assert fhir.put(f"Patient?identifier={system}|v1", json=resource).status_code == 400

    # Missing required element (Condition.subject)
    response = fhir.post("Condition", json={"resourceType": "Condition", "code": {"text": "x"}})
    assert response.status_code == 400
    assert "Condition.subject" in json.dumps(response.json())

    # Update of an existing resource is validated too
    stored = fhir.post("Patient", json=patient(system, "v2")).json()
    bad_update = fhir.put(f"Patient/{stored['id']}", json={**stored, "birthDate": "yesterday"})
    assert bad_update.status_code == 400
    assert search_ids(fhir, "Patient", identifier=f"{system}|v1") == []


# --- gap 4: identifier index --------------------------------------------------------------------


def test_last_updated_bounds_an_identifier_search_to_the_millisecond(fhir: httpx.Client) -> None:
    # What a census of the changes since the last one asks (`_lastUpdated=ge…`), paged.
    system = new_system()
    stamps = {}
    for value in ("LU-1", "LU-2", "LU-3"):
        response = fhir.put(f"Patient?identifier={system}|{value}", json=patient(system, value))
        stamps[value] = response.json()["meta"]["lastUpdated"]
        time.sleep(0.01)  # a millisecond of its own each
    second = stamps["LU-2"]

    def found(**params: str) -> set[str]:
        """The identifier values of every page, one resource a page."""
        values: set[str] = set()
        page = fhir.get("Patient", params={"identifier": f"{system}|", "_count": "1", **params}).json()
        while True:
            values |= {e["resource"]["identifier"][0]["value"] for e in page.get("entry", [])}
            following = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
            if following is None:
                return values
            page = fhir.get(following).json()

    assert found(_lastUpdated=f"ge{second}") == {"LU-2", "LU-3"}, "ge holds the instant itself"
    assert found(_lastUpdated=f"lt{second}") == {"LU-1"}
    assert found(_lastUpdated="ge2999-01-01") == set()


def test_elements_keeps_only_the_elements_asked_for_on_every_page(fhir: httpx.Client) -> None:
    # What a census asks: identifiers and the references it checks, not whole resources.
    system = new_system()
    for value in ("EL-1", "EL-2"):
        response = fhir.put(f"Patient?identifier={system}|{value}", json=patient(system, value, gender="female"))
        assert response.status_code == 201, response.text

    first = fhir.get("Patient", params={"identifier": f"{system}|", "_count": "1", "_elements": "id,identifier"}).json()
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = fhir.get(following).json()

    for page in (first, second):
        (entry,) = page["entry"]
        assert set(entry["resource"]) == {"resourceType", "id", "meta", "identifier"}, entry["resource"]
    assert {e["resource"]["identifier"][0]["value"] for e in (first["entry"][0], second["entry"][0])} == {
        "EL-1",
        "EL-2",
    }
    whole = fhir.get("Patient", params={"identifier": f"{system}|EL-1"}).json()["entry"][0]["resource"]
    assert whole["gender"] == "female" and whole["name"], "the stored resource is left whole"


def test_identifier_matching_is_exact_and_honours_escaping(fhir: httpx.Client) -> None:
    system = new_system()
    values = ["p001", "P001", "A,B", "A", "B", "Q|101", "D$1", "E\\F"]
    ids = {}
    for value in values:
        response = fhir.put(f"Patient?identifier={system}|{esc(value)}", json=patient(system, value))
        assert response.status_code == 201, (value, response.text)
        ids[value] = response.json()["id"]

    def found(query: str) -> set[str]:
        return set(search_ids(fhir, "Patient", identifier=query))

    assert found(f"{system}|p001") == {ids["p001"]}  # exact: not P001
    assert found(f"{system}|P001") == {ids["P001"]}
    assert found(f"{system}|A\\,B") == {ids["A,B"]}  # escaped comma
    assert found(f"{system}|A,B") == {ids["A"], ids["B"]}  # unescaped: SYS|A or B
    assert found(f"{system}|Q\\|101") == {ids["Q|101"]}  # escaped pipe, with system
    assert found("Q\\|101") == set()  # a value holding | is not found without its system
    assert found(f"{system}|D\\$1") == {ids["D$1"]}
    assert found(f"{system}|E\\\\F") == {ids["E\\F"]}
    assert found(f"{system}|") == set(ids.values())  # system only
    assert ids["p001"] in found("p001")  # value only, any system

    # The index follows updates and deletes
    moved = fhir.put(f"Patient/{ids['p001']}", json={**patient(system, "p002"), "id": ids["p001"]})
    assert moved.status_code == 200
    assert found(f"{system}|p001") == set()
    assert found(f"{system}|p002") == {ids["p001"]}
    fhir.delete(f"Patient/{ids['p001']}")
    assert found(f"{system}|p002") == set()


def test_conditional_put_speed_does_not_depend_on_store_size(fhir: httpx.Client) -> None:
    system = new_system()
    # Preload 5,000 Patients with plain POSTs in batches of 1,000.
    for start in range(0, 5000, 1000):
        entries = [
            {"resource": patient(system, f"pre-{i}"), "request": {"method": "POST", "url": "Patient"}}
            for i in range(start, start + 1000)
        ]
        response = fhir.post("", json=bundle("batch", entries))
        assert response.status_code == 200
    # A 1,000-entry batch of conditional PUTs (a rerun: all match) must not scan the store per entry.
    entries = [conditional_put(system, f"pre-{i}", patient(system, f"pre-{i}")) for i in range(1000)]
    started = time.perf_counter()
    response = fhir.post("", json=bundle("batch", entries))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert all(e["response"]["status"].startswith("200") for e in response.json()["entry"])
    # Unindexed, this takes tens of seconds at this size; indexed it is a fraction of a second.
    assert elapsed < 3.0, f"1,000 conditional PUTs took {elapsed:.2f} s"


# --- gap 5: transaction-bundles feature ---------------------------------------------------------


def test_transaction_is_atomic(fhir: httpx.Client) -> None:
    system = new_system()
    existing = fhir.put(f"Patient?identifier={system}|t0", json=patient(system, "t0")).json()
    response = fhir.post(
        "",
        json=bundle(
            "transaction",
            [
                {"resource": patient(system, "t1"), "request": {"method": "POST", "url": "Patient"}},
                conditional_put(system, "t0", patient(system, "t0", family="Changed")),
                {
                    "resource": patient(system, "t2", birthDate="not-a-date"),
                    "request": {"method": "POST", "url": "Patient"},
                },
            ],
        ),
    )
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    # Nothing of it was written: no t1, t0 unchanged (no new version)
    assert search_ids(fhir, "Patient", identifier=f"{system}|t1") == []
    after = fhir.get(f"Patient/{existing['id']}").json()
    assert after["name"][0]["family"] == "Doe"
    assert after["meta"]["versionId"] == existing["meta"]["versionId"]
    assert len(fhir.get(f"Patient/{existing['id']}/_history").json()["entry"]) == 1


def test_transaction_limits(fhir: httpx.Client) -> None:
    system = new_system()
    too_many_updates = [
        {"resource": patient(system, f"u{i}"), "request": {"method": "PUT", "url": f"Patient/{uuid.uuid4()}"}}
        for i in range(51)
    ]
    response = fhir.post("", json=bundle("transaction", too_many_updates))
    assert response.status_code == 400
    assert "more update operations than allowed" in issue_text(response.json())

    nine_with_conditional = [conditional_put(system, f"n{i}", patient(system, f"n{i}")) for i in range(9)]
    response = fhir.post("", json=bundle("transaction", nine_with_conditional))
    assert response.status_code == 400
    assert "Transaction requires strict isolation but has too many entries" in issue_text(response.json())
    assert search_ids(fhir, "Patient", identifier=f"{system}|n0") == []

    eight = nine_with_conditional[:8]
    response = fhir.post("", json=bundle("transaction", eight))
    assert response.status_code == 200
    assert response.json()["type"] == "transaction-response"
    assert all(e["response"]["status"].startswith("201") for e in response.json()["entry"])


def test_transaction_without_feature_is_processed_like_a_batch() -> None:
    with running_local_medplum(transaction_bundles=False) as server, fhir_client(server) as fhir:
        system = new_system()
        entries = [
            {"resource": patient(system, "b1"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient(system, "b2", birthDate="bad"),
                "request": {"method": "POST", "url": "Patient"},
            },
        ] + [conditional_put(system, f"x{i}", patient(system, f"x{i}")) for i in range(10)]  # no limits
        response = fhir.post("", json=bundle("transaction", entries))
        assert response.status_code == 200
        statuses = [e["response"]["status"] for e in response.json()["entry"]]
        assert statuses[0].startswith("201") and statuses[1].startswith("400")
        assert all(s.startswith("201") for s in statuses[2:])
        assert len(search_ids(fhir, "Patient", identifier=f"{system}|b1")) == 1


def test_urn_uuid_references_are_rewritten_in_transactions(fhir: httpx.Client) -> None:
    system = new_system()
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    encounter_urn = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        # Listed before their targets: entry order must not matter.
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {
                "resourceType": "Condition",
                "subject": {"reference": patient_urn},
                "encounter": {"reference": encounter_urn},
                "code": {"text": "x"},
            },
            "request": {"method": "POST", "url": "Condition"},
        },
        {
            "fullUrl": encounter_urn,
            "resource": {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": {"reference": patient_urn},
            },
            "request": {"method": "POST", "url": "Encounter"},
        },
        {"fullUrl": patient_urn, **conditional_put(system, "urn1", patient(system, "urn1"))},
    ]
    response = fhir.post("", json=bundle("transaction", entries))
    assert response.status_code == 200, response.text
    result = response.json()["entry"]
    patient_id = result[2]["resource"]["id"]
    encounter_id = result[1]["resource"]["id"]
    condition = fhir.get(f"Condition/{result[0]['resource']['id']}").json()
    assert condition["subject"]["reference"] == f"Patient/{patient_id}"
    assert condition["encounter"]["reference"] == f"Encounter/{encounter_id}"
    assert fhir.get(f"Encounter/{encounter_id}").json()["subject"]["reference"] == f"Patient/{patient_id}"


def test_batch_of_nested_transactions(fhir: httpx.Client) -> None:
    system = new_system()

    def inner(value: str, fail: bool = False) -> dict[str, Any]:
        patient_urn = f"urn:uuid:{uuid.uuid4()}"
        # The server writes the Observation (POST) before the Patient (PUT): a bad Patient fails the
        # transaction after the Observation was written, which must then be rolled back.
        bad = {"birthDate": "2020-99-99"} if fail else {}
        entries = [
            {"fullUrl": patient_urn, **conditional_put(system, value, patient(system, value, **bad))},
            {
                "resource": {
                    "resourceType": "Observation",
                    "identifier": [{"system": system, "value": f"{value}-obs"}],
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": patient_urn},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ]
        return {"resource": bundle("transaction", entries), "request": {"method": "POST", "url": "/"}}

    response = fhir.post("", json=bundle("batch", [inner("n1"), inner("n2", fail=True), inner("n3")]))
    assert response.status_code == 200, response.text
    outer = response.json()
    assert outer["type"] == "batch-response"
    first, second, third = outer["entry"]
    for ok in (first, third):
        assert ok["response"]["status"].startswith("200")
        assert ok["resource"]["type"] == "transaction-response"
        assert [e["response"]["status"][:3] for e in ok["resource"]["entry"]] == ["201", "201"]
    assert second["response"]["status"].startswith("400")

    # The failed inner transaction wrote nothing; the others are complete and linked.
    assert search_ids(fhir, "Patient", identifier=f"{system}|n2") == []
    assert search_ids(fhir, "Observation", identifier=f"{system}|n2-obs") == []
    for value in ("n1", "n3"):
        [patient_id] = search_ids(fhir, "Patient", identifier=f"{system}|{value}")
        [observation_id] = search_ids(fhir, "Observation", identifier=f"{system}|{value}-obs")
        observation = fhir.get(f"Observation/{observation_id}").json()
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"


# --- gap 6: quota -------------------------------------------------------------------------------


def test_fhir_quota_answers_429() -> None:
    with running_local_medplum(fhir_quota=1000) as server, fhir_client(server) as fhir:
        system = new_system()
        # 1,000 points = 10 creates; a batch of 15 creates: 10 written, then every entry 429, bundle 200.
        entries = [
            {"resource": patient(system, f"q{i}"), "request": {"method": "POST", "url": "Patient"}} for i in range(15)
        ]
        response = fhir.post("", json=bundle("batch", entries))
        assert response.status_code == 200
        statuses = [e["response"]["status"][:3] for e in response.json()["entry"]]
        assert statuses == ["201"] * 10 + ["429"] * 5
        assert response.headers["RateLimit"].split(", ")[1].startswith('"fhirInteractions";r=0;t=')

        single = fhir.get("Patient", params={"identifier": f"{system}|q0"})
        assert single.status_code == 429
        assert single.json()["resourceType"] == "OperationOutcome"

    with running_local_medplum(fhir_quota=250) as server, fhir_client(server) as fhir:
        # A conditional PUT costs a search (20) and an update (100): two fit in 250, the third does not.
        system = new_system()
        responses = [fhir.put(f"Patient?identifier={system}|c{i}", json=patient(system, f"c{i}")) for i in range(3)]
        assert [r.status_code for r in responses] == [201, 201, 429]
        assert '"fhirInteractions";r=130;t=' in responses[0].headers["RateLimit"]
        # As on Medplum, a refusal spends the window, and the outcome says how long until it resets.
        assert '"fhirInteractions";r=0;t=' in responses[2].headers["RateLimit"]
        (issue,) = responses[2].json()["issue"]
        assert issue["code"] == "throttled" and 0 < json.loads(issue["diagnostics"])["_msBeforeNext"] <= 60_000


def test_paced_server_holds_to_its_capacity_whatever_is_in_flight() -> None:
    """MEDPLUM_LOCAL_POINTS_PER_SECOND: the work done, in quota points, takes at least that long, and
    more requests in flight do not raise it (the bench's paced stage stands for a real server so)."""
    with running_local_medplum(points_per_second=10_000) as server, fhir_client(server) as fhir:
        system = new_system()

        def post_batch(start: int) -> httpx.Response:
            entries = [
                {"resource": patient(system, f"p{start + i}"), "request": {"method": "POST", "url": "Patient"}}
                for i in range(25)
            ]
            return fhir.post("", json=bundle("batch", entries))

        # Four batches of 25 creates, two at a time: 10,000 points, a second of this server's work.
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(post_batch, range(0, 100, 25)))
        elapsed = time.perf_counter() - started
        assert all(a.status_code == 200 for a in answers)
        assert len(search_ids(fhir, "Patient", identifier=f"{system}|", _count="1000")) == 100
        assert elapsed >= 0.95, f"100 creates (10,000 points) at 10,000 points/s took only {elapsed:.2f} s"


# --- gap 7: async batches ---------------------------------------------------------------------


def test_async_batch(local_medplum: LocalMedplum, fhir: httpx.Client) -> None:
    system = new_system()
    entries = [conditional_put(system, f"a{i}", patient(system, f"a{i}")) for i in range(5)]
    response = fhir.post("", json=bundle("batch", entries), headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    status_url = response.headers["Content-Location"]
    assert status_url.startswith(local_medplum.fhir_base_url + "job/") and status_url.endswith("/status")

    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = fhir.get(status_url).json()
        assert job["resourceType"] == "AsyncJob"
        statuses.append(job["status"])
        if job["status"] == "completed":
            break
        time.sleep(0.02)
    assert statuses[0] == "accepted" and statuses[-1] == "completed"

    [results] = [p for p in job["output"]["parameter"] if p["name"] == "results"]
    binary_ref = results["valueReference"]["reference"]
    assert binary_ref.startswith("Binary/")
    raw = fhir.get(binary_ref, headers={"Accept": "*/*"})
    assert raw.status_code == 200
    batch_response = raw.json()
    assert batch_response["resourceType"] == "Bundle" and batch_response["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in batch_response["entry"]] == ["201"] * 5

    as_fhir = fhir.get(binary_ref).json()  # asking for FHIR JSON gives the Binary resource
    assert json.loads(base64.b64decode(as_fhir["data"])) == batch_response
    assert len(search_ids(fhir, "Patient", identifier=f"{system}|a0")) == 1


# --- persistence: MEDPLUM_LOCAL_DATA_FILE -------------------------------------------------------


def resource_state(fhir: httpx.Client, reference: str) -> tuple[str, str, str]:
    response = fhir.get(reference)
    assert response.status_code == 200, (reference, response.text)
    body = response.json()
    return body["id"], body["meta"]["versionId"], body["meta"]["lastUpdated"]


def test_data_file_persists_the_store_across_restarts(tmp_path: Path) -> None:
    data_file = tmp_path / "store" / "medplum.ndjson"  # the folder is created by the server
    system = new_system()
    with running_local_medplum(data_file=data_file) as server, fhir_client(server) as fhir:
        first = fhir.put(f"Patient?identifier={system}|p1", json=patient(system, "p1"))
        assert first.status_code == 201
        second = fhir.put(f"Patient?identifier={system}|p1", json=patient(system, "p1", family="Two"))
        assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
        p1 = second.json()["id"]
        batch = fhir.post(
            "",
            json=bundle("batch", [conditional_put(system, v, patient(system, v)) for v in ("p2", "p3")]),
        )
        assert [e["response"]["status"][:3] for e in batch.json()["entry"]] == ["201", "201"]
        p2, p3 = (e["resource"]["id"] for e in batch.json()["entry"])
        observation = fhir.post(
            "",
            json=bundle(
                "transaction",
                [
                    {
                        "resource": {
                            "resourceType": "Observation",
                            "identifier": [{"system": system, "value": "o1"}],
                            "status": "final",
                            "code": {"text": "weight"},
                            "subject": {"reference": f"Patient?identifier={system}|p2"},
                        },
                        "request": {"method": "POST", "url": "Observation"},
                    }
                ],
            ),
        )
        assert observation.status_code == 200, observation.text
        o1 = observation.json()["entry"][0]["resource"]["id"]
        assert fhir.delete(f"Patient/{p3}").status_code == 200
        before = {ref: resource_state(fhir, ref) for ref in (f"Patient/{p1}", f"Patient/{p2}", f"Observation/{o1}")}
    assert data_file.is_file()

    with running_local_medplum(data_file=data_file) as server, fhir_client(server) as fhir:
        # Same ids, versionIds and lastUpdated; history and deletes survive.
        assert {ref: resource_state(fhir, ref) for ref in before} == before
        history = fhir.get(f"Patient/{p1}/_history").json()
        assert [e["resource"]["name"][0]["family"] for e in history["entry"]] == ["Two", "Doe"]
        assert fhir.get(f"Patient/{p3}").status_code == 404
        assert fhir.get(f"Observation/{o1}").json()["subject"]["reference"] == f"Patient/{p2}"

        # The identifier index is rebuilt: searches find the loaded resources ...
        assert set(search_ids(fhir, "Patient", identifier=f"{system}|")) == {p1, p2}
        assert search_ids(fhir, "Observation", identifier=f"{system}|o1") == [o1]
        # ... a conditional PUT with identical content answers 200 without a new version ...
        same = fhir.put(f"Patient?identifier={system}|p1", json=patient(system, "p1", family="Two"))
        assert same.status_code == 200
        assert (same.json()["id"], same.json()["meta"]["versionId"]) == before[f"Patient/{p1}"][:2]
        # ... and one with new content updates the stored resource instead of creating another.
        changed = fhir.put(f"Patient?identifier={system}|p2", json=patient(system, "p2", family="Changed"))
        assert changed.status_code == 200
        assert changed.json()["id"] == p2
        assert changed.json()["meta"]["versionId"] != before[f"Patient/{p2}"][1]
        assert search_ids(fhir, "Patient", identifier=f"{system}|p2") == [p2]
        after_change = resource_state(fhir, f"Patient/{p2}")

    # Writes made after a load are saved too.
    with running_local_medplum(data_file=data_file) as server, fhir_client(server) as fhir:
        assert resource_state(fhir, f"Patient/{p2}") == after_change
        assert len(fhir.get(f"Patient/{p2}/_history").json()["entry"]) == 2


def test_data_file_is_saved_after_idle_time_without_clean_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDPLUM_LOCAL_SAVE_IDLE_SECONDS", "0.2")
    data_file = tmp_path / "medplum.ndjson"
    system = new_system()
    server, process = start_local_medplum(data_file=data_file)
    try:
        with fhir_client(server) as fhir:
            created = fhir.put(f"Patient?identifier={system}|k1", json=patient(system, "k1")).json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and created["id"] not in (
            data_file.read_text() if data_file.exists() else ""
        ):
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no clean shutdown: only the idle save can have run
        process.wait(timeout=10)
    with running_local_medplum(data_file=data_file) as server, fhir_client(server) as fhir:
        assert resource_state(fhir, f"Patient/{created['id']}")[:2] == (
            created["id"],
            created["meta"]["versionId"],
        )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("this is not json\n", "line 1: invalid JSON"),
        ('{"resourceType":"Patient","id":"x"}\n', "not a medplum-local-store file"),
        ("", "it is empty"),
        ('{"format":"medplum-local-store","version":1}\n{"resourceType":"Patient","id":"x"', "invalid JSON"),
        (
            '{"format":"medplum-local-store","version":1}\n{"resourceType":"Patient"}\n',
            "not a stored resource",
        ),
        ('{"format":"medplum-local-store","version":1}\n', "truncated"),
        (None, "cannot read data file"),  # a folder where the file should be
    ],
)
def test_unreadable_data_file_fails_the_start(tmp_path: Path, content: str | None, expected: str) -> None:
    data_file = tmp_path / "medplum.ndjson"
    if content is None:
        data_file.mkdir()
    else:
        data_file.write_text(content)
    with pytest.raises(LocalMedplumError) as failure, running_local_medplum(data_file=data_file):
        pass
    message = str(failure.value)
    assert expected in message and str(data_file) in message and "cannot start" in message
    if content is not None:
        assert data_file.read_text() == content  # left as it was, not replaced by an empty store
