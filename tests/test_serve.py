import json
import threading
import time

import httpx
import pytest
from live_server import LiveServer, post, slow_down, stream_events, streamed_text

from tinylm import load
from tinylm.serve import Limits, StopFilter, create_app

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def word_server(tiny_run):
    with LiveServer(create_app(tiny_run.path)) as s:
        yield s


def test_openai_client_completes_and_streams(text_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{text_server.url}/v1", api_key="unused")
    [model] = client.models.list().data
    result = client.completions.create(model=model.id, prompt="Once", max_tokens=12, seed=5)
    choice = result.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 12 and result.usage.prompt_tokens >= 1
    chunks = list(
        client.completions.create(model=model.id, prompt="Once", max_tokens=12, seed=5, stream=True)
    )
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
        ({"prompt": [1, "a"]}, 400, "prompt"),
        ({"prompt": [[]]}, 400, "prompt"),
        ({"prompt": [1, 10**6]}, 400, "prompt"),  # not in the vocabulary
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "x", "seed": "abc"}, 400, "seed"),
        ({"prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"prompt": "x", "temperatur": 1}, 400, "temperatur"),
        ({"prompt": "x", "echo": 1}, 400, "echo"),
        ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),
        ({"prompt": "x", "logprobs": True}, 400, "logprobs"),
        ({"prompt": "x", "stream_options": {"other": 1}}, 400, "stream_options"),
        ({"prompt": "x", "stream_options": {"include_usage": 1}}, 400, "include_usage"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_every_validation_rule(text_server, body, status, param):
    response = post(text_server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_ignored_openai_fields_are_accepted(text_server):
    body = {
        "prompt": "x",
        "max_tokens": 2,
        "user": "me",
        "echo": False,
        "logprobs": None,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "best_of": 1,
    }
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

    response = httpx.post(
        f"{text_server.url}/v1/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
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
        with httpx.stream(
            "POST",
            f"{server.url}/v1/completions",
            json={"prompt": "a", "max_tokens": 200, "stream": True},
        ) as response:
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


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", float("nan")),
        ("top_p", float("nan")),
        ("temperature", float("inf")),
        ("top_k", 1.5),
    ],
)
def test_non_finite_sampling_values_get_400_naming_the_field(text_server, field, value):
    response = httpx.post(
        f"{text_server.url}/v1/completions",
        headers=JSON,
        content=json.dumps({"prompt": "x", field: value}),
    )  # NaN, Infinity
    assert response.status_code == 400 and response.json()["error"]["param"] == field


def test_a_tiny_temperature_is_greedy(text_server):
    body = {"prompt": "The", "max_tokens": 10}
    greedy = post(text_server, {**body, "temperature": 0}).json()["choices"][0]["text"]
    tiny = post(text_server, {**body, "temperature": 1e-40, "seed": 3}).json()["choices"][0]
    assert tiny["text"] == greedy


def test_one_seed_one_text_from_the_cli_and_the_server_alone_or_not(text_runs, capsys):
    """Also past the context length (32 tokens): the window slides the same way."""
    from tinylm.cli import main

    run = text_runs["pile-bpe"]
    assert (
        main(
            [
                "generate",
                str(run.path),
                "The",
                "--seed",
                "11",
                "--max-new-tokens",
                "60",
                "--temperature",
                "0.9",
                "--top-p",
                "0.95",
                "--top-k",
                "50",
            ]
        )
        == 0
    )
    cli_text = capsys.readouterr().out[len("The") : -1]
    body = {
        "prompt": "The",
        "seed": 11,
        "max_tokens": 60,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 50,
    }
    loaded = load(run.path)
    loaded.task.stop_ids = ()
    assert len(list(loaded.stream("The", 60, 0.9, 50, 0.95, seed=11))) > 30
    with LiveServer(create_app(run.path, Limits(max_tokens=64))) as server:
        alone = post(server, body).json()["choices"][0]["text"]
        results = {}

        def request(name, b):
            results[name] = post(server, b).json()["choices"][0]["text"]

        others = [
            threading.Thread(target=request, args=(i, {**body, "seed": 100 + i})) for i in range(3)
        ]
        for t in others:
            t.start()
        request("mine", body)
        for t in others:
            t.join()
    assert alone == results["mine"] == cli_text


def test_a_failure_in_one_job_ends_that_job_alone(text_runs, monkeypatch):
    """A job whose sampling fails ends with finish_reason "error" and an error event; four
    streams beside it go to their end."""
    import tinylm.inference.engine as engine_module

    real_choose = engine_module.choose

    def choose(logits, sampling, generator, banned=None):
        if sampling.temperature == 1.234:
            raise RuntimeError("boom")
        return real_choose(logits, sampling, generator, banned)

    monkeypatch.setattr(engine_module, "choose", choose)
    app = create_app(text_runs["pile-bpe"].path, Limits(max_tokens=64))
    slow_down(app, 0.005)
    with LiveServer(app) as server:
        results = {}

        def request(name, temperature):
            body = {"prompt": "a", "max_tokens": 40, "temperature": temperature, "seed": 1}
            results[name] = stream_events(server, {**body, "stop": None})

        threads = [threading.Thread(target=request, args=(i, 0.8)) for i in range(4)]
        threads.append(threading.Thread(target=request, args=("bad", 1.234)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    bad = results.pop("bad")
    assert any("error" in e for e in bad) and streamed_text(bad) == ("", "error")
    for events in results.values():
        text, finish = streamed_text(events)
        assert finish in ("length", "stop") and not any("error" in e for e in events)
        assert finish == "stop" or sum(len(c["choices"][0]["text"]) > 0 for c in events) > 10


def test_shutdown_ends_jobs_with_an_error_not_stop(text_runs):
    app = create_app(text_runs["pile-bpe"].path, Limits(max_tokens=200))
    slow_down(app, 0.05)
    with LiveServer(app) as server:
        worker = server.engine
        done = {}

        def request():
            done["events"] = stream_events(server, {"prompt": "a", "max_tokens": 200})

        t = threading.Thread(target=request)
        t.start()
        deadline = time.time() + 10
        while worker.stats()["active"] < 1:
            assert time.time() < deadline
            time.sleep(0.01)
        worker.stop()
        t.join(timeout=10)
    assert streamed_text(done["events"])[1] == "error"


def test_a_non_streaming_client_that_disconnects_frees_its_slot(text_runs):
    app = create_app(text_runs["pile-bpe"].path, Limits(max_tokens=200))
    slow_down(app, 0.05)  # 200 tokens would take 10 s
    with LiveServer(app) as server:
        with pytest.raises(httpx.ReadTimeout):
            post(server, {"prompt": "a", "max_tokens": 200}, timeout=0.5)
        start = time.time()
        while server.engine.stats()["active"]:
            assert time.time() - start < 1, "the slot was not freed"
            time.sleep(0.02)


def test_the_word_completer_suggests_the_likeliest_words(word_server):
    body = post(word_server, {"prompt": "ca", "n": 5, "temperature": 0}).json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3, 4]
    probs = [c["probability"] for c in choices]
    assert probs == sorted(probs, reverse=True) and len({c["text"] for c in choices}) == 5
    assert all(c["finish_reason"] == "stop" and c["text"].isalpha() for c in choices)


def test_typists_at_once_share_searches_and_each_gets_their_own_words(tiny_run):
    """Requests that come while a search runs are searched together in the next one: each
    answer the list that prefix gets alone, cut to its own n."""
    app = create_app(tiny_run.path)
    model = app.state.server.model
    alone = {(p, n): model.complete(p, n)[0] for p in ("ca", "st", "pre", "b") for n in (1, 3)}
    calls, complete = [], model.complete

    def slow_complete(prefixes, top):  # long enough for the others to arrive meanwhile
        calls.append(list(prefixes))
        time.sleep(0.3)
        return complete(prefixes, top)

    model.complete = slow_complete
    asked = [("ca", 3), ("st", 1), ("pre", 3), ("b", 1), ("ca", 1), ("st", 3)]
    got = {}
    with LiveServer(app) as s:

        def ask(prefix, n):
            body = {"prompt": prefix, "n": n, "temperature": 0}
            choices = post(s, body).json()["choices"]
            got[prefix, n] = [(c["text"], c["probability"]) for c in choices]

        threads = [threading.Thread(target=ask, args=a) for a in asked]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join()
    assert 2 <= len(calls) < len(asked) and sorted(p for c in calls for p in c) == sorted(
        p for p, _ in asked
    )
    for prefix, n in asked:
        want = [(w.word[len(prefix) :], w.probability) for w in alone[prefix, n].words]
        assert [t for t, _ in got[prefix, n]] == [t for t, _ in want]
        assert [p for _, p in got[prefix, n]] == pytest.approx([p for _, p in want], rel=1e-5)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"prompt": "\ud800"}, None),
        ({"prompt": "x", "seed": 10**40}, "seed"),
        ({"prompt": "x", "stop": ["\udfff"]}, None),
    ],
)
def test_hostile_requests_get_4xx_and_the_server_goes_on(text_server, body, param):
    response = httpx.post(
        f"{text_server.url}/v1/completions", timeout=30, content=json.dumps(body), headers=JSON
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert post(text_server, {"prompt": "x", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(
    "headers,status",
    [
        ({"host": "evil.example:8000"}, 403),  # DNS rebinding: a foreign name for loopback
        ({"origin": "https://evil.example"}, 403),
        ({"origin": "http://localhost:3000"}, 200),
        ({"origin": "http://127.0.0.1:9"}, 200),
        ({"host": "localhost"}, 200),
    ],
)
def test_foreign_host_and_origin_are_refused_on_loopback(text_server, headers, status):
    response = httpx.get(f"{text_server.url}/v1/models", headers=headers)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["type"] == "permission_error"


def test_allow_origin_lets_a_named_page_in(text_runs):
    app = create_app(text_runs["pile-bpe"].path, allow_origins=("https://ok.example",))
    with LiveServer(app) as server:
        models = f"{server.url}/v1/models"
        assert httpx.get(models, headers={"origin": "https://ok.example"}).status_code == 200
        assert httpx.get(models, headers={"origin": "https://no.example"}).status_code == 403


def test_health_says_503_when_the_engine_died(text_runs):
    app = create_app(text_runs["pile-bpe"].path)
    with LiveServer(app) as server:
        worker = server.engine

        def broken():
            raise RuntimeError("the engine broke")

        worker.engine.step = broken
        post(server, {"prompt": "a", "max_tokens": 3})  # wakes the worker, which dies
        worker.thread.join(timeout=10)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert post(server, {"prompt": "a", "max_tokens": 3}).status_code == 503


def test_model_by_id(text_server):
    name = httpx.get(f"{text_server.url}/v1/models").json()["data"][0]["id"]
    card = httpx.get(f"{text_server.url}/v1/models/{name}").json()
    assert card["id"] == name and card["context_length"] == 32
    assert httpx.get(f"{text_server.url}/v1/models/other").status_code == 404


def test_serve_compile_compiles_before_the_first_request(tiny_run):
    """`tinylm serve --compile` compiles while it starts, so no request waits for it."""
    import torch
    from torch._dynamo.utils import counters

    from tinylm.device import compile_unavailable

    if why := compile_unavailable(torch.device("cpu")):
        pytest.skip(why)
    app = create_app(tiny_run.path, compile=True)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0
    with LiveServer(app) as server:
        for prefix in ("c", "ca", "cat"):
            assert post(server, {"prompt": prefix, "n": 3, "temperature": 0}).status_code == 200
        body = {"prompt": "ca", "temperature": 0.8, "max_tokens": 4, "seed": 1}
        assert post(server, body).status_code == 200
    assert counters["stats"]["unique_graphs"] == compiled


def test_scoring_searching_and_shaping_share_one_thread_beside_the_engine(text_runs, tiny_run):
    """What keeps the server's memory down (glibc keeps an arena a thread): asyncio's default
    pool would run these in threads of their own, named asyncio_N."""
    before = {t.ident for t in threading.enumerate()}
    scoring = {"prompt": "Once upon a time", "echo": True, "logprobs": 2, "max_tokens": 0}
    search = {"prompt": ["fin", "tra"], "n": 3, "temperature": 0, "max_tokens": 8}
    for run, body in [(text_runs["pile-bpe"], scoring), (tiny_run, search)]:
        with LiveServer(create_app(run.path)) as s, httpx.Client(timeout=60) as client:
            statuses = []

            def ask(body=body, url=f"{s.url}/v1/completions", statuses=statuses):
                statuses.append(client.post(url, json=body).status_code)

            threads = [threading.Thread(target=ask) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ask()
            assert statuses == [200] * 7
            started = [t.name for t in threading.enumerate() if t.ident not in before]
            assert [n for n in started if n.startswith("tinylm-aside")] == ["tinylm-aside_0"]
            assert not [n for n in started if n.startswith("asyncio")]
