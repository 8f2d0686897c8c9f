"""OAuth2 client-credentials tokens, cached and renewed shortly before they expire.

Medplum limits `/oauth2/token` to 160 requests a minute per IP, so a token is fetched once and
reused by every request of a run, never per request, and by every client of the process with the same
credential (each Dagster step and check opens its own client: fifteen elements of six checks each would
otherwise ask for about a hundred tokens a minute).
"""

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from migration_assets.medplum.errors import MedplumAuthError, MedplumResponseError
from migration_assets.medplum.target import project_of


@dataclass
class _Issued:
    token: str
    renew_at: float  # time.monotonic()
    project_id: str | None


# Tokens of the process, by token URL, client id and a digest of the secret (never the secret itself).
_issued: dict[tuple[str, str, str], _Issued] = {}
_issued_lock = threading.Lock()


def forget_tokens() -> None:
    """Drop the process's tokens: the next request of every client fetches one (tests start afresh)."""
    with _issued_lock:
        _issued.clear()


class ClientCredentialsToken:
    def __init__(
        self,
        http: httpx.Client,
        token_url: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        # The project the credential acts in, as the token response names it (Medplum's does).
        self.project_id: str | None = None
        # Shared with the process's other clients of this credential (not under a test's own clock).
        self._shared_key = (
            (token_url, client_id, hashlib.sha256(client_secret.encode()).hexdigest())
            if clock is time.monotonic
            else None
        )

    def bearer(self) -> str:
        with self._lock:
            if (self._token is None or self._clock() >= self._renew_at) and not self._adopt_shared():
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` after a 401 so the next request fetches a new one (unless already renewed)."""
        with self._lock:
            if self._token == token:
                self._token = None
        if self._shared_key is not None:
            with _issued_lock:
                if (issued := _issued.get(self._shared_key)) is not None and issued.token == token:
                    del _issued[self._shared_key]

    def _adopt_shared(self) -> bool:
        """Take the process's valid token of this credential, if there is one."""
        if self._shared_key is None:
            return False
        with _issued_lock:
            issued = _issued.get(self._shared_key)
        if issued is None or self._clock() >= issued.renew_at:
            return False
        self._token, self._renew_at, self.project_id = issued.token, issued.renew_at, issued.project_id
        return True

    def _fetch(self) -> None:
        response = self._http.post(
            self._token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
        )
        if response.status_code == 429 or response.status_code >= 500:
            # Throttled (160 token requests a minute per IP) or a server fault: worth retrying.
            raise MedplumResponseError(f"token request to {self._token_url} answered {response.status_code}")
        if response.status_code != 200:
            raise MedplumAuthError(
                f"token request to {self._token_url} answered {response.status_code}: check "
                "MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MedplumResponseError(f"token answer from {self._token_url} holds no access_token") from exc
        expires_in = float(body.get("expires_in", 3600))
        # Renew a tenth of the lifetime early (at most five minutes) so no request carries a token
        # that expires while it is in flight.
        self._renew_at = self._clock() + expires_in - min(300.0, expires_in / 10)
        self._token = token
        self.project_id = project_of(body) or self.project_id
        if self._shared_key is not None:
            with _issued_lock:
                _issued[self._shared_key] = _Issued(token, self._renew_at, self.project_id)
