"""Who may call the server: the Host and Origin checks, and the API key.

A server bound to loopback answers only requests addressed to localhost, 127.0.0.1 or [::1]:
a web page whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host
and is refused. A request from a web page (it carries an Origin) is refused unless the page
is on loopback, on this server itself, or allowed with --allow-origin, as Ollama does with
its allowed origins. The API key is compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

from starlette.requests import Request

from tinylm.serve.requests import ApiError

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1'."""
    return (urlsplit(f"//{host}").hostname or "").lower()


class Guard:
    """ASGI middleware refusing foreign Host and Origin headers with 403."""

    def __init__(self, app, loopback_only: bool = True, allow_origins: tuple[str, ...] = ()):
        self.app, self.loopback_only = app, loopback_only
        self.allow_origins = {o.rstrip("/").lower() for o in allow_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            why = self.refusal(headers.get("host", ""), headers.get("origin"))
            if why:
                body = json.dumps(
                    {
                        "error": {
                            "message": why,
                            "type": "permission_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def refusal(self, host: str, origin: str | None) -> str | None:
        if self.loopback_only and host_name(host) not in LOOPBACK:
            return f"This server answers on loopback only; Host '{host}' is not one of localhost, 127.0.0.1, [::1]."
        if origin is None or "*" in self.allow_origins:
            return None
        o = origin.rstrip("/").lower()
        parts = urlsplit(o)
        if o in self.allow_origins or (parts.hostname or "") in LOOPBACK:
            return None
        if parts.netloc == host.lower():  # the playground, served by this server
            return None
        return f"Requests from the web page at {origin} are not allowed; start the server with --allow-origin {origin} to allow them."


def check_key(request: Request, api_key: str | None) -> None:
    if not api_key:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise ApiError(
            401,
            "A valid API key is required (Authorization: Bearer KEY).",
            kind="authentication_error",
        )
