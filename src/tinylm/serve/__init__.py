"""`tinylm serve`: an OpenAI-style HTTP API and a playground page over one run.

requests.py parses and checks requests, responses.py shapes the answers (logprobs.py their
log-probabilities, answers.py makes them from the engine's events), chat.py turns messages
into a prompt, guard.py says who may call, connections.py what a connection may hold and for
how long, worker.py runs the engine's thread, app.py holds the routes around one API model
(tinylm.Model). `serve()` runs it under uvicorn with connections.py's rules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn

from tinylm.errors import UserError
from tinylm.serve.answers import StopFilter
from tinylm.serve.app import create_app
from tinylm.serve.connections import server_config
from tinylm.serve.guard import LOOPBACK
from tinylm.serve.requests import Limits

__all__ = ["Limits", "StopFilter", "create_app", "read_api_key", "serve", "server_config"]


def read_api_key(path: Path | None, given: str | None) -> str | None:
    """The key from a file, else TINYLM_API_KEY, else the one given on the command line (where
    `ps` shows it); None: no key required."""
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as e:
            raise UserError(f"Cannot read the API key file {path} ({e.strerror}).") from None
        if not key:
            raise UserError(f"The API key file {path} is empty.")
        return key
    return os.environ.get("TINYLM_API_KEY") or given


def serve(
    run_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
    *,
    device: str = "auto",
    name: str | None = None,
    allow_origins: tuple[str, ...] = (),
    compile: bool = False,
) -> None:
    loopback = host.strip("[]") in LOOPBACK
    app = create_app(
        run_path,
        limits,
        api_key,
        device=device,
        name=name,
        loopback_only=loopback,
        allow_origins=allow_origins,
        compile=compile,
    )
    if not loopback:
        print(
            f"tinylm: listening on {host}, reachable from other machines"
            + ("" if api_key else " by anyone (no API key)")
            + "; there is no TLS.",
            file=sys.stderr,
        )
    print(
        f"tinylm: serving {app.state.server.name} on http://{host}:{port}/ (Ctrl-C stops)",
        file=sys.stderr,
    )
    server = uvicorn.Server(
        server_config(app, host, port, log_level="warning", timeout_graceful_shutdown=3)
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:  # uvicorn has said why (the port taken...)
        raise SystemExit(3)
