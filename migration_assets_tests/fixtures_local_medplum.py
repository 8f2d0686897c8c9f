"""Pytest fixtures for the local Medplum server (medplum_local/server.mjs).

Loaded through `pytest_plugins` in conftest.py. The session server is started once; tests that need
special settings (quota, token lifetime, transaction-bundles off) start their own with
`running_local_medplum(...)`. A missing Node binary fails with the launcher's message (run `make setup`).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from migration_assets.devtools.local_medplum import LocalMedplum, running_local_medplum


def get_token(server: LocalMedplum) -> str:
    """An access token from the client-credentials grant."""
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
        trust_env=False,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def fhir_client(server: LocalMedplum, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
    """An httpx.Client with base_url = the FHIR base and a bearer token (a new one if not given)."""
    return httpx.Client(
        base_url=server.fhir_base_url,
        headers={
            "Authorization": f"Bearer {token or get_token(server)}",
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
        },
        timeout=timeout,
        trust_env=False,
    )


@pytest.fixture(scope="session")
def local_medplum() -> Iterator[LocalMedplum]:
    with running_local_medplum() as server:
        yield server


@pytest.fixture(scope="session")
def local_medplum_token(local_medplum: LocalMedplum) -> str:
    """One token for the whole session: /oauth2/token allows only 160 requests a minute, as on Medplum."""
    return get_token(local_medplum)


@pytest.fixture
def fhir(local_medplum: LocalMedplum, local_medplum_token: str) -> Iterator[httpx.Client]:
    """An authorized client for the session's local Medplum server."""
    with fhir_client(local_medplum, local_medplum_token) as client:
        yield client
