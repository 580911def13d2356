"""Hostile clients against a live server: every limit of docs/serving.md's table, each met
with a 4xx naming the field (or served within the limit), never a 5xx or a hang, while
normal clients go on being answered.

Field checks run against conftest's `text_server`; the connection rules (headers and bodies
that never end, idle sockets by the dozen, more connections than allowed) against a server
of the same run whose timeouts are a second or less, so that the file runs in seconds.
"""

import json
import socket
import threading
import time

import httpx
import pytest
from live_server import LiveServer, post

from tinylm.serve import Limits, create_app
from tinylm.serve.logprobs import MAX_SCORED
from tinylm.serve.requests import MAX_MESSAGE, MAX_STOP_CHARS

JSON = {"content-type": "application/json"}
CHAT = [{"role": "user", "content": "Tell me"}]
SCORE = {"echo": True, "logprobs": 20, "max_tokens": 0}
TIGHT = Limits(max_tokens=8, max_n=2, head_timeout=0.5, body_timeout=1, max_connections=8)


def send(server, body, route="/v1/completions", timeout=10):
    """POST `body` (bytes sent as they are, anything else as JSON) and return the response."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + route, content=content, headers=JSON, timeout=timeout)


def refused(response, status=400, param=None) -> dict:
    """The error of a refusal in OpenAI's shape, checked."""
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param
    return error


def answered(server) -> None:
    """A normal client is answered, promptly."""
    start = time.perf_counter()
    response = post(server, {"prompt": "The", "max_tokens": 2}, timeout=10)
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"]
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("body", [b"[1, 2]", b'"hi"', b"3", b"null", b"true", b""])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_body_that_is_not_an_object_gets_400(text_server, body, route):
    refused(send(text_server, body, route))


@pytest.mark.parametrize(
    "body,param",
    [
        ({"prompt": "x", "n": "3"}, "n"),
        ({"prompt": "x", "n": 2.0}, "n"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "echo": "true"}, "echo"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": [None]}, "prompt"),
        ({"prompt": [[None]]}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": "x", "temperature": [1]}, "temperature"),
        ({"prompt": "x", "temperature": {"t": 1}}, "temperature"),
        ({"prompt": "x", "top_p": "1"}, "top_p"),
        ({"prompt": "x", "top_k": 1.5}, "top_k"),
        ({"prompt": "x", "max_tokens": "3"}, "max_tokens"),
        ({"prompt": "x", "logprobs": "1"}, "logprobs"),
        ({"prompt": "x", "seed": [1]}, "seed"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "stop": {"a": 1}}, "stop"),
        ({"prompt": "x", "stop": [None]}, "stop"),
        ({"prompt": "x", "stream_options": [1]}, "stream_options"),
        ({"prompt": "x", "stream_options": {"include_usage": "yes"}}, "include_usage"),
        ({"prompt": "x", "model": [1]}, "model"),
        ({"prompt": "x", "model": {"id": "x"}}, "model"),
        ({"prompt": "x", "user": [1]}, "user"),
        ({"prompt": "x", "logit_bias": [1]}, "logit_bias"),
        ({"prompt": "x", ("k" * 5000): 1}, "k" * 5000),
    ],
)
def test_a_wrong_type_in_a_completion_field_gets_400_naming_it(text_server, body, param):
    refused(send(text_server, body), param=param)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": [None]}, "messages"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages"),
        ({"messages": [{"role": {"r": 1}, "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": None}]}, "messages"),
        ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, "messages"),
        ({"messages": CHAT, "logprobs": "yes"}, "logprobs"),
        ({"messages": CHAT, "logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ({"messages": CHAT, "max_completion_tokens": "3"}, "max_tokens"),
        ({"messages": CHAT, "metadata": [1]}, "metadata"),
        ({"messages": CHAT, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"messages": CHAT, "user": {}}, "user"),
        ({"messages": CHAT, "tools": {"a": 1}}, "tools"),
        ({"messages": CHAT, "n": [2]}, "n"),
    ],
)
def test_a_wrong_type_in_a_chat_field_gets_400_naming_it(text_server, body, param):
    refused(send(text_server, body, "/v1/chat/completions"), param=param)


def test_nulls_mean_the_defaults(text_server):
    nulls = dict.fromkeys(
        ["model", "n", "temperature", "top_p", "top_k", "stop", "seed", "stream", "echo"]
    )
    body = {"prompt": "x", "max_tokens": 2, "logprobs": None, "user": None, **nulls}
    assert send(text_server, body).json()["choices"][0]["finish_reason"]
    chat = {"messages": CHAT, "max_tokens": 2, "logprobs": None, "metadata": None, **nulls}
    del chat["echo"]
    assert send(text_server, chat, "/v1/chat/completions").status_code == 200


@pytest.mark.parametrize(
    "body,param,route",
    [
        ({"prompt": "x", "n": 10**100}, "n", "/v1/completions"),
        ({"prompt": ["x"] * 1000}, "prompt", "/v1/completions"),
        ({"prompt": [[1, 2]] * 1000}, "prompt", "/v1/completions"),
        ({"prompt": "x", "logprobs": 10**6}, "logprobs", "/v1/completions"),
        ({"prompt": "x", "max_tokens": 10**100}, "max_tokens", "/v1/completions"),
        (SCORE | {"prompt": [5] * (MAX_SCORED + 1)}, "prompt", "/v1/completions"),
        (SCORE | {"prompt": [[5] * 1500] * 2, "n": 2}, "prompt", "/v1/completions"),
        ({"prompt": "x", "stop": ["a"] * 1000}, "stop", "/v1/completions"),
        ({"prompt": "x", "stop": "a" * (MAX_STOP_CHARS + 1)}, "stop", "/v1/completions"),
        ({"prompt": "x", "stop": ["b", "a" * 60_000]}, "stop", "/v1/completions"),
        ({"messages": CHAT, "n": 10**9}, "n", "/v1/chat/completions"),
        (
            {"messages": CHAT, "logprobs": True, "top_logprobs": 10**6},
            "top_logprobs",
            "/v1/chat/completions",
        ),
        ({"messages": CHAT, "max_tokens": 10**9}, "max_tokens", "/v1/chat/completions"),
        ({"messages": CHAT, "stop": "a" * 60_000}, "stop", "/v1/chat/completions"),
        ({"messages": CHAT, "temperature": [[1] * 10_000]}, "temperature", "/v1/chat/completions"),
    ],
)
def test_absurd_counts_get_400_naming_the_field_in_a_short_message(text_server, body, param, route):
    error = refused(send(text_server, body, route), param=param)
    assert len(error["message"]) <= MAX_MESSAGE + 10


def test_counts_at_their_limits_are_served(text_server):
    longest = "z" * MAX_STOP_CHARS
    body = {"prompt": ["a", "b"], "n": 2, "max_tokens": 64, "logprobs": 20, "stop": [longest] * 4}
    choices = send(text_server, body, timeout=30).json()["choices"]
    assert len(choices) == 4 and all(len(c["logprobs"]["tokens"]) >= 1 for c in choices)
    chat = {"messages": CHAT, "n": 4, "logprobs": True, "top_logprobs": 20, "max_tokens": 64}
    assert len(send(text_server, chat, "/v1/chat/completions", 30).json()["choices"]) == 4


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": [1] * 100_000},  # a prompt of 100k tokens
        {"prompt": "word " * 100_000},
        {"prompt": ["x" * 10_000] * 8},
        {"messages": [{"role": "user", "content": "a"}] * 10_000},
        {"prompt": [[1]] * 30_000},
    ],
)
def test_a_body_over_64_kib_gets_413(text_server, body):
    refused(send(text_server, body), 413)
    answered(text_server)


def test_the_largest_prompts_the_body_allows_are_served_in_time(text_server):
    """Up to 64 KiB of prompt: the tokenizer reads it all, the model its last context."""
    text = "The river flows past the town. " * 2000  # 62,000 characters
    start = time.perf_counter()
    assert send(text_server, {"prompt": text, "max_tokens": 4}).status_code == 200
    assert send(text_server, {"prompt": [5] * 20_000, "max_tokens": 4}).status_code == 200
    messages = [{"role": "user", "content": "hi"}] * 1500  # many messages
    chat = {"messages": messages, "max_tokens": 4}
    assert send(text_server, chat, "/v1/chat/completions").status_code == 200
    big = {"messages": [{"role": "user", "content": text}], "max_tokens": 4}
    assert send(text_server, big, "/v1/chat/completions").status_code == 200
    scored = send(text_server, SCORE | {"prompt": [5] * MAX_SCORED})
    assert len(scored.json()["choices"][0]["logprobs"]["tokens"]) == MAX_SCORED
    assert time.perf_counter() - start < 20
    answered(text_server)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"prompt": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}",  # an integer of 5,000 digits
        b'{"prompt": "x", "temperature": NaN}',
        b'{"prompt": "x", "temperature": 1e999}',
        b'{"prompt": "\\ud800"}',
        b"\xff\xfe{}",
    ],
)
def test_malformed_or_deeply_nested_json_gets_400(text_server, body):
    response = send(text_server, body)
    assert response.status_code == 400 and response.json()["error"]["message"]
    answered(text_server)


# --- the connection rules, on a server with half-second timeouts ---------------------------


@pytest.fixture(scope="module")
def tight(text_runs):
    with LiveServer(create_app(text_runs["pile-bpe"].path, TIGHT)) as server:
        yield server


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `sock`, or None if it is still open after
    `seconds`."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def head(length: int | None = None, path: str = "/v1/completions") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_and_body(data: bytes) -> tuple[int, dict]:
    top, _, body = data.partition(b"\r\n\r\n")
    return int(top.split()[1]), json.loads(body)


def test_a_silent_connection_is_closed_after_the_head_timeout(tight):
    sock = connect(tight)
    start = time.perf_counter()
    assert closed_within(sock, 5) == b""
    assert 0.4 < time.perf_counter() - start < 2


def test_headers_sent_a_byte_at_a_time_are_cut_off(tight):
    sock, start = connect(tight), time.perf_counter()
    try:
        for byte in head(10):
            sock.send(bytes([byte]))
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_within(sock, 5) == b""
    assert time.perf_counter() - start < 2


def test_a_body_that_never_ends_gets_408_and_the_connection_closes(tight):
    sock = connect(tight)
    sock.sendall(head(100) + b'{"prompt": ')
    start = time.perf_counter()
    status, body = status_and_body(closed_within(sock, 5))
    assert status == 408 and "within 1 s" in body["error"]["message"]
    assert 0.9 < time.perf_counter() - start < 3
    answered(tight)


def test_an_answer_before_the_body_ends_closes_the_connection(tight):
    sock = connect(tight)
    sock.sendall(head(1000, "/v1/nowhere") + b"{")
    status, _ = status_and_body(closed_within(sock, 2))
    assert status == 404


@pytest.mark.parametrize(
    "parts",
    [
        [b"GARBAGE\r\n\r\n"],
        [b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"a" * 20_000, b"\r\n\r\n"],
    ],
)
def test_malformed_http_gets_400_in_the_api_shape(tight, parts):
    """A bad request line, or headers over h11's 16 KiB."""
    sock = connect(tight)
    for part in parts:
        sock.sendall(part)
        time.sleep(0.05)
    status, body = status_and_body(closed_within(sock, 2))
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_idle_connections_by_the_dozen_do_not_keep_clients_out(tight):
    """Slowloris: 40 sockets, silent or mid-headers, against a limit of 8 connections."""
    socks, start = [], time.perf_counter()
    for i in range(40):
        sock = connect(tight)
        if i % 2:
            sock.sendall(head(10)[:20])
        socks.append(sock)
    assert closed_within(socks[0], 0.2) == b""  # the longest idle made room, at once
    assert time.perf_counter() - start < TIGHT.head_timeout
    for _ in range(5):
        answered(tight)
    for sock in socks:
        sock.close()


def test_beyond_the_limit_with_every_connection_busy_the_answer_is_503(tight):
    busy = [connect(tight) for _ in range(TIGHT.max_connections)]
    for sock in busy:
        sock.sendall(head(10) + b"{")  # a request in hand, its body not ended
    time.sleep(0.1)
    response = post(tight, {"prompt": "x", "max_tokens": 2})
    assert refused(response, 503)["type"] == "server_busy"
    assert response.headers["retry-after"] == "1"
    for sock in busy:  # each ends with 408, and then the server has room again
        assert status_and_body(closed_within(sock, 5))[0] == 408
    answered(tight)


def test_normal_streams_go_on_while_hostile_clients_come_and_go(tight):
    """Streaming clients keep their answers while others hold sockets, send half bodies and
    garbage."""
    done, failures = threading.Event(), []

    def hostile():
        while not done.is_set():
            try:
                sock = connect(tight)
                sock.sendall(head(50) + b"{")
                time.sleep(0.05)
                sock.close()
            except OSError as e:
                failures.append(e)

    threads = [threading.Thread(target=hostile) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            events = []
            with httpx.stream(
                "POST",
                f"{tight.url}/v1/completions",
                json={"prompt": "The", "max_tokens": 8, "stream": True},
                timeout=10,
            ) as response:
                assert response.status_code == 200
                events = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not failures
