"""The clients people point at a local model: chat completions, log-probabilities and echo
(what lm-evaluation-harness sends), token-id prompts, usage in streams."""

import json
import shutil
from types import SimpleNamespace

import httpx
import pytest
import torch
from live_server import LiveServer, post, stream_events

from conftest import synthetic_documents
from tinylm.inference import Job, Sampling, Step
from tinylm.inference.sampling import make_generator
from tinylm.serve import Limits, create_app
from tinylm.serve.answers import Answers
from tinylm.serve.chat import TURN_MARKERS, transcript
from tinylm.serve.logprobs import Names


@pytest.fixture(scope="module")
def tok(text_server):
    return text_server.app.state.server.model.tokenizer


def chat(server, body, **kwargs):
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30, **kwargs)


def hf_logprobs(run_path, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, by stock transformers from the run directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_path).eval()
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_openai_chat_client_plain_streamed_and_with_usage(text_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{text_server.url}/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    model = client.models.list().data[0].id
    result = client.chat.completions.create(model=model, messages=messages, max_tokens=12, seed=5)
    choice = result.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and result.object == "chat.completion"
    assert result.usage.prompt_tokens > 5 and result.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=12,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # same seed, same reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == result.usage.completion_tokens
    )


def test_chat_logprobs_are_the_generated_tokens(text_server):
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "seed": 1,
        "logprobs": True,
        "top_logprobs": 3,
        "temperature": 0,
    }
    choice = chat(text_server, body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 6 and all(len(c["top_logprobs"]) == 3 for c in content)
    for c in content:  # greedy: the chosen token is the likeliest
        assert c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"], abs=1e-5)
    joined = bytes(b for c in content for b in c["bytes"]).decode("utf-8", "replace")
    assert joined.strip().startswith(choice["message"]["content"][:3])


def test_the_transcript_and_the_next_turn(text_server, tok):
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "developer", "content": "D"},
    ]
    assert transcript(messages) == "System: S\nUser: U\nAssistant: A\nSystem: D\nAssistant:"
    loaded = text_server.app.state.server.model
    job = loaded.job("x", Sampling(0.0))
    answers = Answers(loaded.task, [job], TURN_MARKERS, logprobs=False, lstrip=True)
    text = ""
    for token in tok.encode(" Fine.\nUser: and"):
        result = answers.take(0, Step(job, token))
        text += result.text
        if result.finish:
            break
    assert (
        text == "Fine." and result.finish == "stop" and job.cancelled.is_set()
    )  # the reply ends at the next turn


def test_a_chat_template_in_the_run_is_rendered_as_transformers_does(text_runs, tmp_path):
    from transformers import AutoTokenizer

    run = tmp_path / "templated"
    shutil.copytree(text_runs["pile-bpe"].path, run)
    config = json.loads((run / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}### assistant\n{% endif %}"
    )
    (run / "tokenizer_config.json").write_text(json.dumps(config))
    app = create_app(run)
    server = app.state.server
    messages = [{"role": "user", "content": "Hello"}]
    prompt = server.chat.prompt(messages)
    hf = AutoTokenizer.from_pretrained(run)
    assert prompt.text == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    tok = server.model.tokenizer
    assert prompt.ids == [tok.bos_id, *tok.encode_template(prompt.text)]
    assert prompt.ids.count(tok.eos_id) == 2  # the start token, and the template's own
    assert server.chat.stops == ["\n### user"]  # between an assistant's turn and a user's
    with LiveServer(app) as live:
        sneaky = {"messages": [{"role": "user", "content": "a<|endoftext|>b"}], "max_tokens": 2}
        response = chat(live, sneaky)
        assert (
            response.status_code == 400 and "special token" in response.json()["error"]["message"]
        )
        assert chat(live, {"messages": messages, "max_tokens": 2}).status_code == 200


def test_echo_log_probabilities_equal_transformers(text_server, text_runs, tok):
    run = text_runs["pile-bpe"].path
    prompt = "The quick brown fox jumps"
    ids = tok.encode(prompt)
    body = {"prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 0}
    choice = post(text_server, body).json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert lp["tokens"] == [tok.token_text(i) for i in ids] and "".join(lp["tokens"]) == prompt
    assert lp["text_offset"] == [len(tok.decode(ids[:i])) for i in range(len(ids))]
    expected = hf_logprobs(run, [tok.bos_id, *ids])  # a text prompt is read after the start token
    assert torch.allclose(torch.tensor(lp["token_logprobs"]), expected, atol=1e-3)
    for token, logp, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        assert top[token] == logp and 2 <= len(top) <= 3  # the two likeliest, and the chosen
    # token ids are read as given: nothing precedes the first, whose log-probability is null;
    # then one token generated greedily, with its log-probability (what lm-eval sends)
    given = [tok.bos_id, *ids]
    body = {"prompt": given, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
    lp = post(text_server, body).json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == len(given) + 1 and lp["tokens"][0] == "<|endoftext|>"
    assert torch.allclose(torch.tensor(lp["token_logprobs"][1:-1]), expected, atol=1e-3)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(run).eval()
    with torch.no_grad():
        last = hf(torch.tensor([given])).logits[0, -1].float().log_softmax(-1)
    assert lp["token_logprobs"][-1] == pytest.approx(float(last.max()), abs=1e-3)


def test_a_prompt_longer_than_the_context_is_scored_in_windows(text_server, tok):
    ids = tok.encode("The cat sat on the mat and looked at the door. " * 8)
    assert len(ids) > 2 * 32  # the tiny model's context
    lp = post(text_server, {"prompt": [ids], "echo": True, "logprobs": 0, "max_tokens": 0}).json()
    values = lp["choices"][0]["logprobs"]["token_logprobs"]
    assert len(values) == len(ids) and values[0] is None and all(v < 0 for v in values[1:])


def test_a_typed_special_token_is_text(text_server, tok):
    body = {"prompt": "a<|endoftext|>b", "echo": True, "max_tokens": 0, "logprobs": 0}
    response = post(text_server, body).json()
    tokens = response["choices"][0]["logprobs"]["tokens"]
    assert "<|endoftext|>" not in tokens and "".join(tokens) == "a<|endoftext|>b"
    assert response["usage"]["prompt_tokens"] == len(tok.encode("a<|endoftext|>b")) > 3


def test_openai_client_scores_token_id_prompts(text_server, tok):
    from openai import OpenAI

    client = OpenAI(base_url=f"{text_server.url}/v1", api_key="unused")
    prompts = [[tok.bos_id, *tok.encode("One two")], [tok.bos_id, *tok.encode("Three")]]
    result = client.completions.create(
        model=text_server.app.state.server.name, prompt=prompts, echo=True, logprobs=1, max_tokens=0
    )
    assert [len(c.logprobs.tokens) for c in result.choices] == [len(p) for p in prompts]
    assert [c.text for c in result.choices] == ["One two", "Three"]
    assert (
        result.usage.prompt_tokens == sum(map(len, prompts)) and result.usage.completion_tokens == 0
    )


def test_echo_streamed_and_whole_agree(text_server):
    body = {"prompt": "Once", "echo": True, "logprobs": 1, "max_tokens": 8, "seed": 3, "n": 2}
    whole = post(text_server, body).json()
    events = stream_events(text_server, {**body, "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    for i, choice in enumerate(whole["choices"]):
        mine = [e["choices"][0] for e in events[:-1] if e["choices"][0]["index"] == i]
        assert mine[0]["text"] == "Once" and choice["text"].startswith("Once")
        assert "".join(c["text"] for c in mine) == choice["text"]
        tokens = [t for c in mine for t in c["logprobs"]["tokens"]]
        offsets = [t for c in mine for t in c["logprobs"]["text_offset"]]
        assert (
            tokens == choice["logprobs"]["tokens"] and offsets == choice["logprobs"]["text_offset"]
        )
    assert all(e["usage"] is None for e in events[:-1])


def test_a_stop_token_is_the_last_log_probability():
    """lm-eval drops the last entry as the generated one: a job that ends at end-of-text at
    once must still list that token."""
    job = Job([1], 1, Sampling(0.0), make_generator(0))
    answers = Answers(
        SimpleNamespace(detokenizer=lambda: SimpleNamespace(length=0)), [job], [], logprobs=True
    )
    end = Step(job, finish="stop", logprob=-0.5, top=[(2, -0.5)], stop_token=2)
    result = answers.take(0, end)
    assert [(e.token, e.logprob) for e in result.entries] == [(2, -0.5)] and result.finish == "stop"


def test_a_request_without_max_tokens_gets_the_default_within_the_limit(text_runs, tiny_run):
    with LiveServer(create_app(text_runs["pile-bpe"].path, Limits(max_tokens=5))) as s:
        body = {"prompt": "The", "temperature": 1.0, "seed": 0}
        response = post(s, body)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 5
        reply = chat(s, {"messages": [{"role": "user", "content": "Hi"}], "seed": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 5
    with LiveServer(create_app(tiny_run.path, Limits(max_tokens=3))) as s:
        response = post(s, {"prompt": "ab", "temperature": 1.0, "seed": 0})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ],
)
def test_chat_validation(text_server, body, param):
    response = chat(text_server, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_the_word_completer_refuses_what_only_a_text_model_does(tiny_run):
    with LiveServer(create_app(tiny_run.path)) as s:
        for body, param in [
            ({"prompt": "ab", "echo": True, "max_tokens": 0}, "echo"),
            ({"prompt": "ab", "logprobs": 1}, "logprobs"),
            ({"prompt": [1, 2]}, "prompt"),
        ]:
            response = post(s, body)
            assert response.status_code == 400 and response.json()["error"]["param"] == param
        response = chat(s, {"messages": [{"role": "user", "content": "ab"}]})
        assert (
            response.status_code == 400 and "word completer" in response.json()["error"]["message"]
        )


def test_the_model_card_says_the_context_length_where_clients_read_it(text_server):
    card = httpx.get(f"{text_server.url}/v1/models").json()["data"][0]
    assert card["context_length"] == card["max_model_len"] == 32


def test_each_token_gives_its_share_of_the_text(tok):
    """Text offsets come from these: a character split over byte-level tokens belongs to the
    token that completes it, and the pieces join to the decoded text."""
    pieces, names = tok.detokenizer(), Names(tok)
    text = "naïve 🙂 café"
    ids = [tok.eos_id, *tok.encode(text)]
    shares = [pieces.add(i).text for i in ids]
    assert "".join(shares) + pieces.flush() == text and shares[0] == ""
    assert names(tok.eos_id) == "<|endoftext|>"


def test_word_level_echo_offsets_point_at_each_word(text_runs):
    """The echo is what the model read (lowercase words, no punctuation; an unknown word's
    <UNK> shows no text, as tinylm decodes it), and each offset points at its word."""
    words = synthetic_documents()[0].split()[:6]
    prompt = " ".join(words[:3]) + ", Qzxv " + " ".join(words[3:])
    with LiveServer(create_app(text_runs["pile-word"].path)) as s:
        body = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 3, "seed": 0}
        choice = post(s, body).json()["choices"][0]
    lp, text = choice["logprobs"], choice["text"]
    read = " ".join(w.strip(".,!?").lower() for w in words)
    assert text.startswith(read) and lp["tokens"][3] == "<UNK>"
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        if token != "<UNK>":
            assert text[offset : offset + len(token)] == token
    assert None not in lp["token_logprobs"] and len(lp["tokens"]) >= 8
