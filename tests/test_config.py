import pytest

from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.preset import apply_overrides, load_preset, parse_duration, preset_names


def test_presets_load_and_round_trip(tmp_path):
    assert {"words", "words-seq2seq"} <= set(preset_names())
    cfg = load_preset("words-seq2seq")
    assert cfg.model.arch == "seq2seq" and cfg.model.d_model == 128 and cfg.model.n_heads == 4
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert RunConfig.load(path) == cfg
    assert load_preset(str(path)).model == cfg.model  # a user's YAML file works as a preset


def test_overrides_are_typed_and_checked():
    cfg = apply_overrides(
        load_preset("words"), ["train.lr=1e-3", "model.n_layers=2", "train.time=null"]
    )
    assert cfg.train.lr == 1e-3 and cfg.model.n_layers == 2 and cfg.train.time is None
    for bad in ["train.nope=1", "nosection.lr=1", "lr=1"]:
        with pytest.raises(UserError):
            apply_overrides(cfg, [bad])


def test_unknown_preset_names_the_choices():
    with pytest.raises(UserError, match="words-seq2seq"):
        load_preset("wrods")


@pytest.mark.parametrize(
    "text,seconds", [("300", 300), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("1h30m", 5400)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "0", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserError):
        parse_duration(text)


def test_yaml_types_are_checked(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 3e-4\n  max_steps: 100\nmodel:\n  d_model: 64\n")
    cfg = load_preset(str(path))
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 100 and cfg.model.d_model == 64
    path.write_text("model:\n  d_model: wide\n")
    with pytest.raises(UserError, match="model.d_model"):
        load_preset(str(path))


def test_choices_are_checked():
    for bad in ["train.schedule=cosin", "model.arch=rnn", "tokenizer.kind=sentencepiece"]:
        with pytest.raises(UserError, match="must be one of"):
            apply_overrides(load_preset("words"), [bad])


def test_learning_rate_schedules():
    from tinylm.config import TrainConfig
    from tinylm.optim import learning_rate

    cfg = TrainConfig(lr=1.0, warmup_steps=10, schedule="wsd", cooldown=0.2)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(0.1)  # warming up
    assert learning_rate(cfg, 50, 0.5) == 1.0  # stable
    assert learning_rate(cfg, 90, 0.9) == pytest.approx(0.5)  # half way down the cooldown
    cfg.schedule = "cosine"
    assert learning_rate(cfg, 50, 0.5) == pytest.approx(0.5)
    assert learning_rate(cfg, 99, 1.0) == pytest.approx(0.0)


def test_every_number_and_choice_has_its_rule_beside_it():
    from dataclasses import fields

    from tinylm.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig

    for section in (DataConfig, TokenizerConfig, ModelConfig, TrainConfig):
        for f in fields(section):
            numeric = ("int" in f.type or "float" in f.type) and f.type != "bool"
            if numeric or f.name in ("kind", "arch", "schedule", "precision"):
                assert "rule" in f.metadata, f"{section.__name__}.{f.name} has no rule"


def test_every_preset_passes_its_own_checks():
    from tinylm.tasks import data_for

    for name in preset_names():
        cfg = load_preset(name)
        assert data_for(cfg).batch_split(cfg, 1)[0] == cfg.train.batch_tokens
        cfg.check()


def test_a_presets_fp32_settings_follow_the_machine(tmp_path, monkeypatch):
    """`without_bf16:` applies where the run computes in fp32 (no native bf16), not elsewhere,
    and a CPU held below AVX512-BF16 by ONEDNN_MAX_CPU_ISA computes in fp32."""
    from tinylm import device

    path = tmp_path / "mine.yaml"
    path.write_text("tokenizer:\n  kind: char\nwithout_bf16:\n  model:\n    d_model: 64\n")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert load_preset(str(path)).model.d_model == 96  # the default
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert load_preset(str(path)).model.d_model == 64
    monkeypatch.undo()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not device.cpu_has_native_bf16()


def test_pile_bpe_reads_windows_of_128_where_it_trains_in_fp32(monkeypatch):
    """The shipped preset's `without_bf16:` (bench/README.md: 128 beat 256 in fp32 only)."""
    from tinylm import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert load_preset("pile-bpe").model.context_length == 256
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert load_preset("pile-bpe").model.context_length == 128
