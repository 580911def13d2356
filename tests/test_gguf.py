"""GGUF export (tinylm/export/gguf.py).

Always: each export read back with gguf's GGUFReader (tensors equal to the run's weights once
the rotary permutation is undone, metadata complete), the refusals (one sentence, nothing
written) and the Modelfile. Where llama-cpp-python imports: the export run in a real llama.cpp,
which must tokenize as tinylm does, give the same logits and the same greedy text.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TEXT_MODEL, synthetic_documents, tiny_config, train_run, web2_sample
from tinylm import export_gguf, load
from tinylm.cli import main
from tinylm.errors import UserError
from tinylm.export.gguf import unpermute
from tinylm.inference import Engine, Sampling

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
# (b) where llama-cpp-python imports; a mark, so that a run without it trains no run for them
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed")

PARAGRAPH = (
    "The history of the world's oldest cities, as told in 1999 by 3 historians: "
    "it isn't simple!\n\nSome say   it began\twith rivers; others (wrongly?) with kings - "
    "naïve, perhaps, and “quoted” — but we'll see. <|endoftext|> is text here, 100% sure…"
)


def train(tmp_path_factory, name, cfg):
    run, _ = train_run(cfg, tmp_path_factory.mktemp("runs") / name, show_progress=False)
    return run.path


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, text_file):
    """A tiny BPE text model with a context of 256, long enough for ~200 tokens of logits,
    trained at a high rate so that its greedy text is word-like rather than one token over and
    over (~35 s on 2 cores)."""
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "model.context_length=256"]
    extra += ["train.batch_tokens=1024", "train.lr=0.02"]
    cfg = tiny_config("pile-bpe", data=text_file, steps=150, extra=extra)
    return train(tmp_path_factory, "bpe256", cfg)


@pytest.fixture(scope="module")
def qk_run(tmp_path_factory, text_file):
    """QK-norm (saved as Qwen3ForCausalLM) with an untied output layer."""
    extra = [*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "model.context_length=64"]
    extra += ["model.qk_norm=true", "model.tie_embeddings=false", "train.batch_tokens=512"]
    return train(
        tmp_path_factory, "qk", tiny_config("pile-bpe", data=text_file, steps=60, extra=extra)
    )


@pytest.fixture(scope="module")
def words(tmp_path_factory, tiny_run):
    """A copy of the shared tiny words run, so that the exports written into it (model-*.gguf,
    Modelfile) stay out of the run the other test modules use."""
    return Path(shutil.copytree(tiny_run.path, tmp_path_factory.mktemp("copies") / "words"))


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory, text_runs):
    """A copy of the shared tiny BPE run (context 32)."""
    return Path(
        shutil.copytree(text_runs["pile-bpe"].path, tmp_path_factory.mktemp("copies") / "bpe")
    )


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and not re.search(r"[.!?] [A-Z]", message)


# --- (a) the file itself


@pytest.mark.parametrize("which", ["words", "bpe-tied", "qk-untied"])
def test_f32_tensors_equal_the_runs_weights(which, words, small_bpe, qk_run):
    run = {"words": words, "bpe-tied": small_bpe, "qk-untied": qk_run}[which]
    config = json.loads((run / "config.json").read_text())
    path = export_gguf(run)
    assert path == run / "model-f32.gguf"
    fields, tensors = read(path)
    arch = "qwen3" if which == "qk-untied" else "llama"
    assert fields["general.architecture"] == arch
    weights = load_file(run / "model.safetensors")
    heads, tied = config["num_attention_heads"], config["tie_word_embeddings"]
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if not tied:
        names["lm_head.weight"] = "output.weight"
    assert ("output.weight" in tensors) == (not tied)  # tied: llama.cpp reuses the embedding
    hf = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    hf += ["self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj"]
    hf += ["mlp.down_proj"] + (["self_attn.q_norm", "self_attn.k_norm"] if arch == "qwen3" else [])
    ours = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate"]
    ours += ["ffn_up", "ffn_down", "attn_q_norm", "attn_k_norm"]
    for i in range(config["num_hidden_layers"]):
        names.update(
            {
                f"model.layers.{i}.{a}.weight": f"blk.{i}.{b}.weight"
                for a, b in zip(hf, ours[: len(hf)], strict=True)
            }
        )
    assert set(tensors) == set(names.values())
    for hf_name, name in names.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.array(t.data).reshape(weights[hf_name].shape)
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            assert not np.array_equal(data, weights[hf_name].numpy())  # permuted for llama's rope
            data = unpermute(data, heads)
        np.testing.assert_array_equal(data, weights[hf_name].numpy(), err_msg=name)


def test_metadata_is_complete(small_bpe, words):
    run = small_bpe
    config = json.loads((run / "config.json").read_text())
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    fields, _ = read(export_gguf(run))
    expected = {
        "llama.vocab_size": config["vocab_size"],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["head_dim"],
        "general.file_type": 0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {k: fields.get(k) for k in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(config["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert "tokenizer.ggml.padding_token_id" not in fields
    vocab = tokenizer["model"]["vocab"]
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in tokenizer["model"]["merges"]]
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.CONTROL and set(types[1:]) == {gguf.TokenType.NORMAL}

    # the character tokenizer: one byte-level piece per character, specials as control tokens
    fields, _ = read(export_gguf(words))
    tok = load(words).tokenizer
    assert fields["tokenizer.ggml.tokens"][:4] == ["<pad>", "<sos>", "<eos>", "Ġ"]
    assert fields["tokenizer.ggml.tokens"][4:] == [
        tok.id_to_token(i) for i in range(4, tok.vocab_size)
    ]
    assert fields["tokenizer.ggml.token_type"][:4] == [gguf.TokenType.CONTROL] * 3 + [
        gguf.TokenType.NORMAL
    ]
    assert fields["tokenizer.ggml.merges"] == ["<sos> <eos>"]  # the stand-in that never applies
    ids = [fields[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "padding")]
    assert ids == [tok.bos_id, tok.eos_id, tok.pad_id]


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_smaller_dtypes(dtype, words):
    path = export_gguf(words, dtype=dtype)
    assert path.name == f"model-{dtype}.gguf"
    fields, tensors = read(path)
    want = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    assert fields["general.file_type"] == {"f16": 1, "q8_0": 7}[dtype]
    for name, t in tensors.items():
        assert t.tensor_type == (
            gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else want
        )
    weights = load_file(words / "model.safetensors")
    embed = gguf.quants.dequantize(tensors["token_embd.weight"].data, want)
    np.testing.assert_allclose(embed, weights["model.embed_tokens.weight"].numpy(), atol=0.01)


def test_modelfile(words, small_bpe, tmp_path):
    out = export_gguf(small_bpe, tmp_path / "share" / "tiny.gguf", dtype="q8_0")
    assert out == tmp_path / "share" / "tiny.gguf" and out.is_file()
    assert (tmp_path / "share" / "Modelfile").read_text() == (
        "FROM ./tiny.gguf\n"
        'TEMPLATE "{{ .Prompt }}"\n'
        'PARAMETER stop "<|endoftext|>"\n'
        "PARAMETER temperature 0.8\n"
        "PARAMETER top_k 0\n"
        "PARAMETER top_p 1\n"
        "PARAMETER repeat_penalty 1\n"
        "PARAMETER num_ctx 32\n"
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "tiny.gguf"]
    export_gguf(words)
    modelfile = (words / "Modelfile").read_text()
    assert (
        modelfile.startswith("FROM ./model-f32.gguf\n") and 'PARAMETER stop "<eos>"\n' in modelfile
    )
    assert "PARAMETER num_ctx 16\n" in modelfile


def refusal(run, phrase, **kwargs):
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(UserError, match=phrase) as e:
        export_gguf(run, **kwargs)
    assert one_sentence(str(e.value)), str(e.value)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_refusals(tmp_path_factory, words_file, text_runs, tiny_run):
    refusal(text_runs["pile-word"].path, "word-level tokenizer lowercases")
    refusal(tiny_run.path, "Unknown GGUF dtype", dtype="q4_0")
    seq2seq = tiny_config("words-seq2seq", data=words_file, steps=2)
    refusal(train(tmp_path_factory, "s2s", seq2seq), "encoder-decoder")
    relu2 = tiny_config(data=words_file, steps=2, extra=["model.activation=relu2"])
    refusal(train(tmp_path_factory, "relu2", relu2), "relu2; llama.cpp's llama and qwen3")
    acausal = tiny_config(data=words_file, steps=2, extra=["model.causal=false"])
    refusal(train(tmp_path_factory, "acausal", acausal), "without a causal mask")


def test_refusals_of_broken_run_directories(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run)
    (run / "model.safetensors").unlink()
    refusal(run, "no trained weights")
    (run / "config.json").unlink()
    refusal(run, "no config.json")
    with pytest.raises(UserError, match="not a run directory"):
        export_gguf(tmp_path / "missing")


def test_command_line(words, text_runs, capsys):
    assert main(["export", str(words), "--gguf", "--dtype", "f16"]) == 0
    assert capsys.readouterr().out.strip().endswith("model-f16.gguf")
    assert main(["export", str(words)]) == 2  # no format named
    assert "--gguf" in capsys.readouterr().err
    assert main(["export", str(text_runs["pile-word"].path), "--gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinylm: ") and len(err.splitlines()) == 1


# --- (b) in a real llama.cpp


def llama(path, n_ctx):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=2,
        logits_all=True,
        vocab_only=False,
        type_k=llama_cpp.GGML_TYPE_F32,  # an f16 cache would round every key and value
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def tinylm_logits(loaded, ids):
    with torch.no_grad():
        return loaded.net(torch.tensor([ids])).logits[0].numpy()


def tinylm_greedy(loaded, prompt, max_tokens=None):
    """tinylm's greedy tokens (its engine: stop token, banned tokens, length limit) and text."""
    job = loaded.job(prompt, Sampling(0.0), max_tokens=max_tokens)
    tokens = [s.token for s in Engine(loaded.net).generate([job]) if s.token is not None]
    text = "".join(loaded.stream(prompt, max_tokens, temperature=0.0))
    return tokens, text


def llama_greedy(llm, loaded, prompt, max_tokens=None):
    """llama.cpp's greedy sampler on llama.cpp's own tokens of the prompt, with tinylm's banned
    tokens taken out (a logits processor), until the end token or tinylm's length limit."""
    task = loaded.task
    limit = task.max_new_tokens(task.prompt(prompt), max_tokens)
    banned = list(task.banned)

    def ban(_, scores):
        scores[banned] = -np.inf
        return scores

    from llama_cpp import LogitsProcessorList

    out = []
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    processors = LogitsProcessorList([ban]) if banned else None
    for token in llm.generate(tokens, temp=0.0, logits_processor=processors):
        if token == llm.token_eos() or len(out) == limit:
            break
        out.append(token)
    return out, llm.detokenize(out).decode("utf-8", errors="replace")


@needs_llama_cpp
def test_llama_cpp_runs_the_word_completer(words):
    loaded = load(words, "cpu")
    llm = llama(export_gguf(words), n_ctx=loaded.cfg.model.context_length)
    tok = loaded.tokenizer
    prefixes = [*loaded.cfg.demo, "a", "zy", "transformatio"]
    for prefix in prefixes:
        assert llm.tokenize(prefix.encode(), add_bos=True) == loaded.task.prompt(prefix).ids
    for word in (words / "split" / "val.txt").read_text().split()[:50]:
        assert llm.tokenize(word.encode()) == [tok.bos_id, *tok.encode(word)], word
    for word in ["inventory", "transformations", "abc"]:  # a few words' worth of tokens
        ids = [tok.bos_id, *tok.encode(word)][: loaded.cfg.model.context_length]
        diff = np.abs(llama_logits(llm, ids) - tinylm_logits(loaded, ids)).max()
        assert diff <= 1e-3, (word, diff)
    for prefix in prefixes:
        theirs, mine = llama_greedy(llm, loaded, prefix), tinylm_greedy(loaded, prefix)
        assert theirs == mine, prefix
    # the completions stop at <eos>, as tinylm's do, not at the length limit
    assert any(len(tinylm_greedy(loaded, p)[0]) < loaded.task.max_len - len(p) for p in prefixes)
    llm.close()


@needs_llama_cpp
def test_llama_cpp_runs_the_bpe_text_model(bpe_run, small_bpe):
    loaded = load(bpe_run, "cpu")
    tok = loaded.tokenizer
    llm = llama(export_gguf(bpe_run), n_ctx=256)
    texts = [
        *loaded.cfg.demo,
        PARAGRAPH,
        "",
        " ",
        "  leading spaces",
        "x\n",
        *synthetic_documents(5),
    ]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True) == [tok.bos_id, *tok.encode(text)], text
    # the tiny run of the shared fixture (context 32) tokenizes alike
    small = load(small_bpe, "cpu").tokenizer
    vocab = llama_cpp.Llama(str(export_gguf(small_bpe)), vocab_only=True, verbose=False)
    for text in texts:
        assert vocab.tokenize(text.encode()) == [small.bos_id, *small.encode(text)], text

    ids = [tok.bos_id, *tok.encode(" ".join(synthetic_documents(3)))][:200]
    assert len(ids) == 200
    diff = np.abs(llama_logits(llm, ids) - tinylm_logits(loaded, ids)).max()
    assert diff <= 1e-3, diff
    # a long prompt too, short enough that 50 more tokens fit the context: past it tinylm
    # slides its window and llama.cpp stops (llama-cli would shift its context)
    doc = synthetic_documents(1, seed=7)[0].split()
    n = max(n for n in range(len(doc)) if len(tok.encode(" ".join(doc[:n]))) <= 150)
    long_prompt = " ".join(doc[:n])
    lengths, distinct = [], set()
    for prompt in [*loaded.cfg.demo, long_prompt]:
        theirs, mine = llama_greedy(llm, loaded, prompt, 50), tinylm_greedy(loaded, prompt, 50)
        assert theirs == mine, prompt
        lengths.append(len(mine[0]))
        distinct |= set(mine[0])
    assert max(lengths) == 50, lengths  # not all cut short by the end token
    assert len(distinct) >= 10  # text, not one token over and over
    llm.close()
    vocab.close()


@needs_llama_cpp
def test_llama_cpp_runs_qk_norm_as_qwen3(qk_run):
    loaded = load(qk_run, "cpu")
    tok = loaded.tokenizer
    llm = llama(export_gguf(qk_run), n_ctx=64)
    ids = [tok.bos_id, *tok.encode(PARAGRAPH)][:64]
    diff = np.abs(llama_logits(llm, ids) - tinylm_logits(loaded, ids)).max()
    assert diff <= 1e-3, diff
    prompt = loaded.cfg.demo[0]
    assert llama_greedy(llm, loaded, prompt, 20) == tinylm_greedy(loaded, prompt, 20)
    llm.close()


@needs_llama_cpp
def test_llama_cpp_reads_characters_of_several_bytes(tmp_path_factory):
    """A character that is several UTF-8 bytes is one token, joined by merges of its bytes."""
    accented = ["café", "naïve", "señor", "über", "façade", "smörgåsbord", "日本語"]
    data = tmp_path_factory.mktemp("data") / "accented.txt"
    data.write_text("\n".join(web2_sample(500) + accented) + "\n")
    run = train(tmp_path_factory, "accented", tiny_config(data=data, steps=5))
    fields, _ = read(path := export_gguf(run))
    assert "Ã© " not in fields["tokenizer.ggml.merges"] and "Ã ©" in fields["tokenizer.ggml.merges"]
    loaded = load(run, "cpu")
    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for word in [*accented, "éé", "ñé", "abc"]:
        assert vocab.tokenize(word.encode()) == loaded.task.prompt(word).ids, word
        ids = loaded.task.prompt(word).ids[1:]
        assert vocab.detokenize(ids).decode() == word
    vocab.close()


@needs_llama_cpp
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_llama_cpp_smaller_dtypes_give_the_same_greedy_tokens(dtype, bpe_run, words):
    loaded = load(bpe_run, "cpu")
    llm = llama(export_gguf(bpe_run, dtype=dtype), n_ctx=256)
    for prompt in loaded.cfg.demo:
        theirs, mine = llama_greedy(llm, loaded, prompt, 8), tinylm_greedy(loaded, prompt, 8)
        assert theirs[0] == mine[0], (prompt, theirs, mine)
    llm.close()
    loaded = load(words, "cpu")
    llm = llama(export_gguf(words, dtype=dtype), n_ctx=16)
    for prefix in loaded.cfg.demo:
        assert llama_greedy(llm, loaded, prefix) == tinylm_greedy(loaded, prefix), prefix
    llm.close()
