import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from tinylm.serve import Limits, StopFilter, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
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
        return self.app.state.server.engine


def slow_down(app, seconds: float) -> None:
    """Make every model call take a while, so tests can see requests in flight."""
    model = app.state.server.model
    forward = model.forward

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow


@pytest.fixture(scope="module")
def text_server(text_runs):
    with LiveServer(create_app(text_runs["pile-bpe"].path, Limits(max_tokens=64, max_n=4))) as s:
        yield s


@pytest.fixture(scope="module")
def word_server(tiny_run):
    with LiveServer(create_app(tiny_run.path)) as s:
        yield s


def post(server, body, **kwargs):
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=30, **kwargs)


def test_openai_client_completes_and_streams(text_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{text_server.url}/v1", api_key="unused")
    [model] = client.models.list().data
    result = client.completions.create(model=model.id, prompt="Once", max_tokens=12, seed=5)
    choice = result.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 12 and result.usage.prompt_tokens >= 1
    chunks = list(client.completions.create(model=model.id, prompt="Once", max_tokens=12, seed=5,
                                            stream=True))  # fmt: skip
    assert len(chunks) >= 2
    assert "".join(c.choices[0].text for c in chunks) == choice.text  # same seed, same text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_n_and_list_prompts_and_stop(text_server):
    body = post(text_server, {"prompt": ["A", "B"], "n": 2, "max_tokens": 5, "seed": 1}).json()
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2, 3]
    stopped = post(
        text_server, {"prompt": "The", "max_tokens": 64, "stop": [" ", "e"], "seed": 2}
    ).json()
    text = stopped["choices"][0]["text"]
    assert " " not in text and "e" not in text


def test_word_run_completes_a_prefix(word_server):
    body = post(word_server, {"prompt": "fin", "n": 3, "temperature": 0.8, "seed": 0}).json()
    for choice in body["choices"]:
        assert choice["text"].isalpha() or choice["text"] == ""
        assert len("fin" + choice["text"]) <= 15
    bad = post(word_server, {"prompt": "fi9"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"prompt": "x", "temperature": 2.5}, 400, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, 400, "top_p"),
        ({"prompt": "x", "top_k": -1}, 400, "top_k"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 65}, 400, "max_tokens"),  # over the server's limit
        ({"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
        ({"prompt": "x", "n": 0}, 400, "n"),
        ({"prompt": "x", "n": 5}, 400, "n"),
        ({"prompt": ["a", "b", "c"], "n": 2}, 400, "n"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "x", "stop": ""}, 400, "stop"),
        ({"prompt": 42}, 400, "prompt"),
        ({"prompt": [1, 2, 3]}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "word " * 200}, 400, "prompt"),  # longer than the model's context
        ({"prompt": "x", "seed": "abc"}, 400, "seed"),
        ({"prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"prompt": "x", "temperatur": 1}, 400, "temperatur"),
        ({"prompt": "x", "echo": True}, 400, "echo"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_every_validation_rule(text_server, body, status, param):
    response = post(text_server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_ignored_openai_fields_are_accepted(text_server):
    body = {"prompt": "x", "max_tokens": 2, "user": "me", "echo": False, "logprobs": None,
            "presence_penalty": 0, "frequency_penalty": 0.0, "best_of": 1}  # fmt: skip
    assert post(text_server, body).status_code == 200


@pytest.mark.parametrize(
    "content,headers,status",
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b"[1, 2]", {"content-type": "application/json"}, 400),
        (b'{"prompt": "x"}', {"content-type": "text/plain"}, 415),
        (b'{"prompt": "x"}', {}, 415),
        (b"\xff\xfe", {"content-type": "application/json"}, 400),
        (json.dumps({"prompt": "x" * 70_000}).encode(), {"content-type": "application/json"}, 413),
    ],
)
def test_bad_bodies_get_4xx_json(text_server, content, headers, status):
    response = httpx.post(f"{text_server.url}/v1/completions", content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_oversized_body_without_length_header(text_server):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    response = httpx.post(f"{text_server.url}/v1/completions", content=chunks(),
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413


def test_unknown_routes_and_methods(text_server):
    assert httpx.get(f"{text_server.url}/v2/nothing").status_code == 404
    response = httpx.get(f"{text_server.url}/v1/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_health_models_and_playground(text_server):
    health = httpx.get(f"{text_server.url}/health").json()
    assert health["status"] == "ok" and health["active"] == 0
    model = httpx.get(f"{text_server.url}/v1/models").json()["data"][0]
    assert model["object"] == "model" and model["parameters"] > 1000
    page = httpx.get(f"{text_server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="prompt"', 'id="temperature"', 'id="top_p"', 'id="max_tokens"', 'id="run"'):
        assert element in page.text


def test_full_queue_answers_503_with_retry_after(text_runs):
    app = create_app(text_runs["pile-bpe"].path, Limits(max_active=1, max_queue=1))
    slow_down(app, 0.05)
    with LiveServer(app) as server:
        results = {}

        def long_request(name):
            results[name] = post(server, {"prompt": "a", "max_tokens": 40})

        first = threading.Thread(target=long_request, args=("first",))
        first.start()
        deadline = time.time() + 10
        while server.engine.stats()["active"] < 1:
            assert time.time() < deadline
            time.sleep(0.01)
        second = threading.Thread(target=long_request, args=("second",))
        second.start()
        while server.engine.stats()["waiting"] < 1:
            assert time.time() < deadline
            time.sleep(0.01)
        third = post(server, {"prompt": "a", "max_tokens": 2})
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["type"] == "server_busy"
        first.join()
        second.join()
        assert results["first"].status_code == results["second"].status_code == 200


def test_a_disconnect_frees_the_slot_at_once(text_runs):
    app = create_app(text_runs["pile-bpe"].path, Limits(max_tokens=200))
    slow_down(app, 0.05)  # 200 tokens would take 10 s
    with LiveServer(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions",
                          json={"prompt": "a", "max_tokens": 200, "stream": True}) as response:  # fmt: skip
            next(response.iter_lines())  # the first token has come
            assert server.engine.stats()["active"] == 1
        start = time.time()
        while server.engine.stats()["active"]:
            assert time.time() - start < 2, "the slot was not freed"
            time.sleep(0.02)


def test_short_requests_are_not_held_up_by_long_ones(text_runs):
    app = create_app(text_runs["pile-bpe"].path, Limits(max_tokens=200))
    slow_down(app, 0.01)
    with LiveServer(app) as server:
        finished = {}

        def request(name, tokens):
            post(server, {"prompt": "a", "max_tokens": tokens, "stop": None})
            finished[name] = time.time()

        long = threading.Thread(target=request, args=("long", 150))
        long.start()
        time.sleep(0.2)
        request("short", 3)
        long.join()
        assert finished["short"] < finished["long"]


def test_api_key(text_runs):
    with LiveServer(create_app(text_runs["pile-bpe"].path, api_key="s3cret")) as server:
        assert post(server, {"prompt": "a", "max_tokens": 1}).status_code == 401
        ok = post(
            server, {"prompt": "a", "max_tokens": 1}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200


def test_stop_filter_holds_back_a_possible_stop_string():
    f = StopFilter(["END"])
    assert f.push("abc E") == "abc "
    assert f.push("N") == ""
    assert f.push("x") == "ENx"
    assert f.push("yE") == "y"
    assert f.push("ND more") == "" and f.stopped
    assert StopFilter([]).push("anything") == "anything"
