"""train.report_to: TensorBoard, Weights & Biases (offline) and trackio (its local store) get
the figures metrics.jsonl gets, read back with each library's own reader, and a resumed run
goes on in the same tracker run."""

import json
import shutil
import struct
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from conftest import TINY_MODEL, tiny_config, train_run
from tinylm.cli import main
from tinylm.errors import UserError
from tinylm.preset import apply_overrides, load_preset
from tinylm.runs import RunDir

ALL = "train.report_to=tensorboard,wandb,trackio"


@pytest.fixture(scope="module", autouse=True)
def offline_trackers(tmp_path_factory):
    """wandb offline; trackio's store in a folder of the test's own (read when trackio is
    first imported, which the first run of this module does)."""
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_DIR", raising=False)
        mp.setenv("TRACKIO_DIR", str(root / "trackio"))
        yield root


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if key in r]


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """The same steps, and the same values (TensorBoard keeps float32)."""
    steps = [s for s, _ in got] == [s for s, _ in want]
    return steps and [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def tensorboard_series(run: RunDir, tag: str) -> list[tuple[int, float]]:
    """TensorBoard's own reader, which drops the events a resumed run purged."""
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def wandb_records(path):
    """The records of a .wandb file: wandb's record protobuf in LevelDB's log format (blocks of
    32 KiB, each record a 7-byte header of CRC, length and type, FULL or FIRST/MIDDLE/LAST
    pieces), after a 7-byte file header. wandb 0.31 has no Python reader of its own."""
    data, pos, pieces = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def named(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_runs(run: RunDir) -> list[dict]:
    """Each local wandb run folder of the run: its id, history by step, and summary."""
    out = []
    for folder in sorted((run.path / "wandb").glob("offline-run-*")):
        [path] = folder.glob("*.wandb")
        found = {"id": None, "history": [], "summary": {}}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                found["id"] = rec.run.run_id
            elif kind == "history":
                row = {named(i): json.loads(i.value_json) for i in rec.history.item}
                found["history"].append({**row, "step": row["_step"]})
            elif kind == "summary":
                found["summary"].update(
                    {named(i): json.loads(i.value_json) for i in rec.summary.update}
                )
        out.append(found)
    return out


def trackio_logs(run: RunDir) -> list[dict]:
    from trackio import SQLiteStorage

    state = run.read_json("trackers.json")["trackio"]
    return SQLiteStorage.get_logs(state["project"], state["name"])


def test_report_to_takes_a_list_or_a_comma_separated_string():
    cfg = load_preset("words")
    assert cfg.train.report_to == []
    assert apply_overrides(cfg, ["train.report_to=wandb, trackio"]).train.report_to == [
        "wandb",
        "trackio",
    ]
    assert apply_overrides(cfg, ["train.report_to=[tensorboard]"]).train.report_to == [
        "tensorboard"
    ]
    with pytest.raises(UserError, match="report_to has 'mlflow'; each must be one of"):
        apply_overrides(cfg, ["train.report_to=wandb,mlflow"])


def test_every_tracker_gets_the_metrics_and_the_test_figures(tmp_path, words_file, capsys):
    out = tmp_path / "run"
    argv = ["train", "words", "--data", words_file, "--out", out, "--max-steps", 40]
    code = main([str(a) for a in [*argv, *TINY_MODEL, "train.eval_every=20", ALL]])
    assert code == 0, capsys.readouterr().err
    run = RunDir.open(out)
    records, test = run.metrics(), run.read_json("eval.json")
    loss, val = series(records, "loss"), series(records, "val_loss")
    assert [s for s, _ in loss] == [10, 20, 30, 40] and [s for s, _ in val] == [20, 40]

    assert same(tensorboard_series(run, "train/loss"), loss)
    assert same(tensorboard_series(run, "val/loss"), val)
    assert same(tensorboard_series(run, "train/chars_per_s"), series(records, "chars_per_s"))
    assert same(tensorboard_series(run, "test/bits_per_char"), [(40, test["bits_per_char"])])

    training, evaluation = wandb_runs(run)  # the run, then the evaluation's visit
    wandb_id = run.read_json("trackers.json")["wandb"]["id"]
    assert training["id"] == evaluation["id"] == wandb_id
    assert same(series(training["history"], "train/loss"), loss)
    assert same(series(training["history"], "val/loss"), val)
    assert evaluation["summary"]["test/bits_per_char"] == pytest.approx(test["bits_per_char"])
    assert evaluation["summary"]["test/baselines/bigram/bits_per_char"] == pytest.approx(
        test["baselines"]["bigram"]["bits_per_char"]
    )

    logs = trackio_logs(run)
    assert same(series(logs, "train/loss"), loss)
    assert same(series(logs, "val/loss"), val)
    assert same(series(logs, "test/next_char_accuracy"), [(40, test["next_char_accuracy"])])


def test_a_resumed_run_goes_on_in_the_same_tracker_runs(tmp_path, words_file):
    """A run killed after logging step 30 whose last checkpoint is step 20 (its checkpoint
    file put back as a kill -9 would have left it) redoes steps 21 to 30: each tracker ends
    with every step once, in the tracker run it started."""
    out = tmp_path / "run"
    cfg = lambda: tiny_config(data=words_file, steps=40, extra=["train.eval_every=20", ALL])  # noqa: E731
    saved = tmp_path / "checkpoint-20.safetensors"

    def killed_at_30(state):
        if state.step == 21:  # the checkpoint of step 20 is on disk
            shutil.copy(out / "checkpoint.safetensors", saved)
        return state.step >= 30

    run, summary = train_run(cfg(), out, should_stop=killed_at_30)
    assert summary["reason"] == "interrupted" and summary["step"] == 30
    ids = run.read_json("trackers.json")
    held = [10, 20, 30]  # what the trackers hold when the run "dies"
    assert [s for s, _ in series(trackio_logs(run), "train/loss")] == held
    assert [s for s, _ in tensorboard_series(run, "train/loss")] == held
    shutil.copy(saved, out / "checkpoint.safetensors")
    run, summary = train_run(cfg(), out, resume=True)
    assert summary["step"] == 40 and run.read_json("trackers.json") == ids

    records = run.metrics()
    loss, val = series(records, "loss"), series(records, "val_loss")
    assert [s for s, _ in loss] == [10, 20, 30, 40]
    assert same(tensorboard_series(run, "train/loss"), loss)
    assert same(tensorboard_series(run, "val/loss"), val)
    assert same(series(trackio_logs(run), "train/loss"), loss)
    first, resumed = wandb_runs(run)
    assert first["id"] == resumed["id"] == ids["wandb"]["id"]
    # offline, the resumed folder holds the redone step 30 too: the same figures (a resume is
    # bit-identical), which wandb keeps once when both are synced
    assert series(first["history"], "train/loss")[-1] == series(resumed["history"], "train/loss")[0]
    assert [s for s, _ in series(resumed["history"], "train/loss")] == [30, 40]


def test_a_tracker_not_installed_is_one_sentence_before_any_work(
    tmp_path, words_file, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a missing module
    out = tmp_path / "run"
    argv = ["train", "words", "--data", words_file, "--out", out, "--max-steps", 40]
    code = main([str(a) for a in [*argv, *TINY_MODEL, "train.report_to=wandb"]])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip() == (
        "tinylm: train.report_to names wandb, which is not installed; pip install "
        "'tinylm[wandb]' (or wandb), or leave it out."
    )
