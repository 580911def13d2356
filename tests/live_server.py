"""A live tinylm server for tests: uvicorn in a thread on a free loopback port, and the
requests the server tests send it."""

import json
import socket
import threading
import time

import httpx
import uvicorn

from tinylm.serve import server_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a thread, on a free loopback port, configured as `tinylm serve` runs it
    (its connection limits included)."""

    def __init__(self, app):
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = server_config(app, "127.0.0.1", self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self):
        return self.app.state.server.worker


def slow_down(app, seconds: float) -> None:
    """Make every model call take a while, and no answer end early at end-of-text (unseeded,
    a tiny model samples it within a few tokens now and then), so tests can see requests in
    flight."""
    app.state.server.task.stop_ids = ()
    model = app.state.server.model.net
    forward = model.forward

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow


def post(server, body, timeout=30, **kwargs):
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=timeout, **kwargs)


def stream_events(server, body, **kwargs):
    """The parsed events of a streamed completion (an error event is {"error": ...})."""
    events = []
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60, **kwargs
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def streamed_text(events) -> tuple[str, str]:
    chunks = [e for e in events if "choices" in e]
    return "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0][
        "finish_reason"
    ]
