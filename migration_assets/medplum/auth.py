"""OAuth2 client-credentials tokens, cached and renewed shortly before they expire.

Medplum limits `/oauth2/token` to 160 requests a minute per IP, so a token is fetched once and
reused by every request of a run, never per request.
"""

import threading
import time
from collections.abc import Callable

import httpx

from migration_assets.medplum.errors import MedplumAuthError, MedplumResponseError
from migration_assets.medplum.target import project_of


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

    def bearer(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` after a 401 so the next request fetches a new one (unless already renewed)."""
        with self._lock:
            if self._token == token:
                self._token = None

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
