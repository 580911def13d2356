"""Two CPU ranks (gloo), through the real CLI: in step, only rank 0 writing, and a clean exit
however the run ends (success, a user error, Ctrl-C). `bench/ddp_loop.sh` runs this file many
times in a row: a multi-process test must not fail one time in twenty."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from live_server import free_port

from conftest import TINY_MODEL, TINY_TEXT_MODEL

HERE = Path(__file__).parent
NOISE = ("Traceback", "terminate called", "gloo", "Gloo", "Aborted")


def train_args(out, data, steps) -> list[str]:
    return [
        "train",
        "pile-bpe",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--no-report",
        *TINY_MODEL,
        *TINY_TEXT_MODEL,
        "tokenizer.vocab_size=300",
        "train.eval_every=5",
        "train.micro_batch_tokens=128",
    ]


def worker_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}


def start_ranks(report, argv) -> list[subprocess.Popen]:
    """Two ranks started as torchrun starts them (the same environment variables)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **worker_env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [sys.executable, str(HERE / "ddp_worker.py"), str(report), *argv]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def finish(procs, timeout=240) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in procs]


def test_two_processes_under_torchrun_stay_in_sync_and_only_rank_0_writes(tmp_path, text_file):
    out, report = tmp_path / "ddp", tmp_path / "report"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(HERE / "ddp_worker.py"),
        str(report),
        *train_args(out, text_file, 12),
    ]
    result = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-3000:]
    r0, r1 = (json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["code"] == r1["code"] == 0
    [s0], [s1] = r0["summaries"], r1["summaries"]
    assert s0["step"] == s1["step"] == 12
    assert r0["checksums"] == r1["checksums"]  # DDP kept the replicas identical
    assert r0["writes"] and not r1["writes"]  # only rank 0 touched the run directory
    steps = [
        json.loads(line)["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in line and "val_loss" not in line
    ]
    assert steps == sorted(set(steps))  # one writer: no duplicated log lines
    # train.batch_tokens is the global batch: 2 ranks x 2 micro-batches x 12 steps account for
    # it exactly, and DDP averages the gradients once per step, on the last micro-batch
    assert s0["tokens"] == s1["tokens"] == 12 * 512
    assert r0["micro"] == r1["micro"] == [128] * (12 * 2)
    assert r0["no_sync"] == r1["no_sync"] == 12
    assert "Stopped (budget) after 12 steps" in result.stdout  # said once, by rank 0
    assert result.stdout.count("Stopped (") == 1


def test_a_user_error_on_rank_0_ends_every_rank_with_one_sentence(tmp_path):
    argv = train_args(tmp_path / "run", tmp_path / "no-such-data.jsonl", 12)
    for code, err in finish(start_ranks(tmp_path / "report", argv), timeout=120):
        assert code == 2, err
        assert err.strip().startswith("tinylm: ") and "does not exist" in err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_stops_every_rank_at_one_step_and_keeps_the_checkpoint(tmp_path, text_file):
    out, report = tmp_path / "run", tmp_path / "report"
    procs = start_ranks(report, train_args(out, text_file, 100_000))
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and '"loss"' in metrics.read_text()):  # training has begun
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    for p in procs:  # as a terminal does: Ctrl-C reaches every process of the job
        p.send_signal(signal.SIGINT)
    results = finish(procs, timeout=120)
    for code, err in results:
        assert code == 130, err
        assert not [n for n in NOISE if n in err], err
    r0, r1 = (json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in (0, 1))
    [s0], [s1] = r0["summaries"], r1["summaries"]
    assert s0["reason"] == s1["reason"] == "interrupted"
    assert s0["step"] == s1["step"] and r0["checksums"] == r1["checksums"]
    assert (out / "checkpoint.safetensors").is_file()
