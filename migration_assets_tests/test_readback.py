"""What the idempotency check compares when it reads a resource back instead of resubmitting it."""

from migration_assets.verify.readback import as_compared


def test_what_medplum_adds_on_write_is_not_a_difference():
    sent = {"resourceType": "Patient", "identifier": [{"system": "s", "value": "P1"}], "gender": "female"}
    stored = {
        **sent,
        "id": "5b0c9a53-2b7e-4a55-9f3f-0c8f2e6d1a11",
        "meta": {"versionId": "v1", "lastUpdated": "2026-12-04T10:00:00.000Z", "project": "p", "author": {}},
    }
    assert as_compared(stored) == as_compared(sent)


def test_the_meta_the_loader_writes_is_compared():
    sent = {"resourceType": "Patient", "meta": {"tag": [{"system": "s", "code": "migrated"}]}}
    assert as_compared({**sent, "meta": {**sent["meta"], "versionId": "v2"}}) == as_compared(sent)
    assert as_compared({**sent, "meta": {"versionId": "v2"}}) != as_compared(sent)


def test_a_binary_read_back_as_its_signed_storage_url_is_the_binary_that_was_written():
    binary = "0a6f0c1e-8a4e-4f0e-9b1a-2f2d7c3b9e10"
    sent = {"content": [{"attachment": {"url": f"Binary/{binary}", "size": 3}}]}
    signed = f"https://medplum.example.org/storage/{binary}/v7?Expires=1&Key-Pair-Id=k&Signature=abc"
    assert as_compared({"content": [{"attachment": {"url": signed, "size": 3}}]}) == as_compared(sent)
    other = f"https://medplum.example.org/storage/{binary[::-1]}/v7?Expires=1&Signature=abc"
    assert as_compared({"content": [{"attachment": {"url": other, "size": 3}}]}) != as_compared(sent)


def test_any_other_difference_is_one():
    sent = {"resourceType": "Condition", "subject": {"reference": "Patient?identifier=s|P1"}}
    assert as_compared({**sent, "subject": {"reference": "Patient/123"}}) != as_compared(sent)
    assert as_compared({**sent, "note": [{"text": "added in Medplum"}]}) != as_compared(sent)


def test_a_link_between_the_entries_of_a_transaction_is_the_reference_medplum_stored():
    note = {"resourceType": "ClinicalImpression", "encounter": {"reference": "urn:uuid:4b1e"}}
    stored = {**note, "encounter": {"reference": "Encounter/123"}}
    assert as_compared(stored) == as_compared(note, {"urn:uuid:4b1e": "Encounter/123"})
    assert as_compared(stored) != as_compared(note, {"urn:uuid:4b1e": "Encounter/456"})
