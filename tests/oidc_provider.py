"""A small OpenID Connect identity provider on loopback, for the OAUTHBEARER tests.

It does what a managed Kafka's provider does for a service account, and no more: the
client credentials grant (RFC 6749 §4.4, client id and secret in HTTP basic auth, as
librdkafka sends them) at ``/token``, answering an RS256-signed JWT (RFC 7519) whose
``sub`` is the client id, ``aud`` :data:`AUDIENCE`, ``iss`` the provider's URL; and the
signing key as a JWK set (RFC 7517) at ``/jwks``, which Apache Kafka's
``OAuthBearerValidatorCallbackHandler`` fetches to verify the tokens.

    with OidcProvider({"wirestream": "secret"}) as idp:
        idp.token_url, idp.jwks_url, idp.issuer, idp.issued
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AUDIENCE = "kafka"
KEY_ID = "wirestream-test-key"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class OidcProvider:
    """Serves /token and /jwks on 127.0.0.1 from a thread; ``clients``: id -> secret."""

    def __init__(self, clients: dict[str, str], lifetime_s: int = 3600) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.clients = dict(clients)
        self.lifetime_s = lifetime_s
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: list[str] = []  # client ids a token was given to
        self.refused = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/jwks":
                    self._answer(200, provider.jwks())
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                client = provider._client(self.headers.get("Authorization", ""))
                if self.path != "/token" or client is None:
                    provider.refused += 1
                    self._answer(401, {"error": "invalid_client"})
                    return
                provider.issued.append(client)
                self._answer(200, {"access_token": provider.token_for(client), "token_type": "Bearer",
                                   "expires_in": provider.lifetime_s})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.url
        self.token_url = f"{self.url}/token"
        self.jwks_url = f"{self.url}/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="oidc-provider")

    def _client(self, authorization: str) -> str | None:
        from urllib.parse import unquote

        kind, _, value = authorization.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            client_id, _, secret = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        client_id, secret = unquote(client_id), unquote(secret)
        return client_id if self.clients.get(client_id) == secret else None

    def jwks(self) -> dict[str, Any]:
        public = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "kid": KEY_ID, "use": "sig", "alg": "RS256",
                          "n": _uint(public.n), "e": _uint(public.e)}]}

    def token_for(self, client_id: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}
        claims = {"iss": self.issuer, "sub": client_id, "aud": AUDIENCE, "iat": now, "nbf": now - 5,
                  "exp": now + self.lifetime_s, "scope": "kafka"}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
