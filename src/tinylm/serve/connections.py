"""What a connection may hold, and for how long: the limits below the routes.

uvicorn closes a keep-alive connection that stays silent, but not one that sends its request
headers a byte at a time (each byte restarts its keep-alive timer) or never sends them, and it
has no limit on open connections but a plain-text 503. A few such clients (slowloris) would
hold sockets, and file descriptors, for ever. So the server runs uvicorn with its own
connection class, `Connection` (uvicorn's h11 protocol, with three rules added):

- a request's headers must arrive within `head_timeout` of the connection opening, or of the
  previous answer on it ending; otherwise the connection is closed;
- a connection whose request body was not read to its end when the answer ended (the answer
  came first: 413, 404...) is closed, rather than left to take more of that body;
- at most `max_connections` are open: a new one beyond that closes the connection that has
  waited longest for a request, and if every connection has a request in hand, its request
  is answered 503 with Retry-After, as a full queue is.

The body of a request is read by `read_body` within `body_timeout` (408 after it) and
`max_body` bytes (413), so a body that never ends holds nothing for long. Malformed HTTP gets
uvicorn's 400, with a JSON body in the API's error shape.
"""

from __future__ import annotations

import asyncio
import functools
import json

import h11
import uvicorn
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from tinylm.serve.requests import ApiError, Limits


class Connection(H11Protocol):
    """uvicorn's h11 connection with the rules of the module docstring."""

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # when it began waiting for its next request

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()
        if (
            sum(not c.transport.is_closing() for c in self.connections)
            > self.limits.max_connections
        ):
            self._make_room()

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE):  # its body not all read
            self.transport.close()
            return
        self._await_head()
        super().on_response_complete()

    def idle(self) -> bool:
        """No request in hand: waiting for one (or for the rest of its headers)."""
        return self.cycle is None or self.cycle.response_complete

    def _await_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.idle_since = self.loop.time()
        self.head_timer = self.loop.call_later(
            self.limits.head_timeout, self._head_overdue, self.cycle
        )

    def _head_overdue(self, cycle) -> None:
        if self.cycle is cycle:  # no new request since the timer started
            self.transport.close()

    def _make_room(self) -> None:
        """Close the connection that has waited longest for a request; with none waiting,
        this one's request is answered 503."""
        waiting = [
            c
            for c in self.connections
            if c is not self and c.idle() and not c.transport.is_closing()
        ]
        if waiting:
            min(waiting, key=lambda c: c.idle_since).transport.close()
        else:
            self.app = too_many

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (headers over h11's 16 KB, a bad request line): 400 in the API's shape."""
        body = error_body(f"{msg} (malformed HTTP)", "invalid_request_error")
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def error_body(message: str, kind: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()


async def too_many(scope, receive, send) -> None:
    """The answer to a request on a connection beyond `max_connections`."""
    body = error_body("The server has too many connections; try again in a moment.", "server_busy")
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request's JSON body, at most `max_body` bytes (413), within `body_timeout` (408)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError(
            415, f"Send the request as application/json, not {ctype or 'no content type'}."
        )
    limit = limits.max_body
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big(limit)
    try:
        return await asyncio.wait_for(read_at_most(request, limit), limits.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"The request body did not arrive within {limits.body_timeout:g} s."
        ) from None


async def read_at_most(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise too_big(limit)
    return bytes(data)


def too_big(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than {limit} bytes.")


def server_config(app, host: str, port: int, **options) -> uvicorn.Config:
    """uvicorn's configuration for the server `app` (create_app's), with its connection rules;
    the tests' live server uses it too."""
    limits = app.state.server.limits
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=functools.partial(Connection, limits=limits),
        **options,
    )
