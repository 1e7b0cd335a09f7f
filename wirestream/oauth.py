"""SASL/OAUTHBEARER tokens from an OpenID Connect provider, for the clients that cannot
fetch them themselves.

librdkafka fetches its own tokens (``sasl.oauthbearer.method=oidc``: the client
credentials grant of RFC 6749 §4.4 at ``sasl.oauthbearer.token.endpoint.url``). aiokafka,
under the windows' Faust worker, needs a token provider object instead:
:class:`OidcTokenProvider` is that object, made from the same librdkafka properties, so
that one configuration serves both libraries (``wirestream.kafka_security``).

Like librdkafka, it sends the client id and secret as HTTP basic authentication, asks for
``sasl.oauthbearer.scope`` if set, and keeps a token until 80 % of its lifetime has
passed. The token endpoint's certificate is verified against ``https.ca.location`` (else
the system's CAs). The secret and the token are never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from wirestream.errors import WirestreamError


class OAuthError(WirestreamError):
    """The identity provider did not give a token (the message names the endpoint and the
    client id, never the secret)."""


#: the part of a token's lifetime after which it is fetched again (librdkafka's too)
REFRESH_AT = 0.8


def fetch_token(properties: Mapping[str, str], timeout: float = 10.0) -> tuple[str, float]:
    """A token by the client credentials grant: ``(access token, lifetime in seconds)``."""
    url = properties.get("sasl.oauthbearer.token.endpoint.url", "")
    client_id = properties.get("sasl.oauthbearer.client.id", "")
    secret = properties.get("sasl.oauthbearer.client.secret", "")
    form = {"grant_type": "client_credentials"}
    if properties.get("sasl.oauthbearer.scope"):
        form["scope"] = properties["sasl.oauthbearer.scope"]
    basic = base64.b64encode(f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(secret)}".encode()).decode()
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), method="POST",
        headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                 "Content-Type": "application/x-www-form-urlencoded"})
    context = ssl.create_default_context(cafile=properties.get("https.ca.location")) \
        if url.startswith("https:") else None
    where = f"OAuth token endpoint {url} (client {client_id!r})"
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OAuthError(f"{where} refused: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OAuthError(f"{where} unreachable: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise OAuthError(f"{where} answered something that is not JSON") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise OAuthError(f"{where} answered without an access_token")
    try:
        lifetime = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    return token, max(1.0, lifetime)


def _token_provider_base() -> type:
    from aiokafka.abc import AbstractTokenProvider

    return AbstractTokenProvider


class OidcTokenProvider(_token_provider_base()):  # type: ignore[misc]
    """aiokafka's token provider for the client credentials grant (see the module)."""

    def __init__(self, properties: Mapping[str, str]) -> None:
        self._properties = dict(properties)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    async def token(self) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.current)

    def current(self) -> str:
        """The token, fetched again when 80 % of its lifetime has passed."""
        with self._lock:
            now = time.monotonic()
            if self._token is None or now >= self._renew_at:
                self._token, lifetime = fetch_token(self._properties)
                self._renew_at = now + REFRESH_AT * lifetime
            return self._token

    def __repr__(self) -> str:  # never the secret, never the token
        return (f"<OidcTokenProvider {self._properties.get('sasl.oauthbearer.token.endpoint.url')} "
                f"client {self._properties.get('sasl.oauthbearer.client.id')!r}>")
