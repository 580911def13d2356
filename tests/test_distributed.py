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

import pytest
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
    """The workers import this checkout's tinylm (not another one installed in the venv)."""
    path = os.pathsep.join([str(HERE), str(HERE.parent / "src")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


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


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory, text_file):
    """Two processes on one machine, as `torchrun --nproc_per_node=2` starts them."""
    tmp_path = tmp_path_factory.mktemp("one-machine")
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
    return result, out, report


def test_two_processes_under_torchrun_stay_in_sync_and_only_rank_0_writes(one_machine):
    result, out, report = one_machine
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-3000:]
    r0, r1 = reports(report)
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


def reports(report: Path) -> list[dict]:
    return [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in (0, 1)]


def two_machines(tmp_path, argv, cwds, env: dict | None = None) -> list[tuple[int, str, str]]:
    """Two "machines" of one process each, on the loopback address, meeting through torchrun's
    c10d rendezvous as docs/training.md says; machine i runs in cwds[i] with its own token cache
    and writes its rank's report as tmp_path/report-i.rankR.json."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for i, cwd in enumerate(cwds):
        cwd.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=tinylm-test",
            str(HERE / "ddp_worker.py"),
            str(tmp_path / f"report-{i}"),
            *argv,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=cwd,
                env={**worker_env(), "TINYLM_CACHE": str(cwd / "cache"), **(env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


def test_two_machines_train_the_same_model_and_only_rank_0s_holds_the_run(
    tmp_path, text_file, one_machine
):
    """Each machine has its own folder and token cache; the run directory (a relative --out)
    is written on rank 0's machine only, and the other needs none."""
    cwds = [tmp_path / "a", tmp_path / "b"]
    results = two_machines(tmp_path, train_args(Path("run"), text_file, 12), cwds)
    for code, _, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
    main = 0 if Path(f"{tmp_path}/report-0.rank0.json").is_file() else 1
    r0 = json.loads(Path(f"{tmp_path}/report-{main}.rank0.json").read_text())
    r1 = json.loads(Path(f"{tmp_path}/report-{1 - main}.rank1.json").read_text())
    assert (cwds[main] / "run" / "tinylm.yaml").is_file() and not (cwds[1 - main] / "run").exists()
    assert r0["writes"] and not r1["writes"]
    assert r0["checksums"] == r1["checksums"] == reports(one_machine[2])[0]["checksums"]
    assert [s["step"] for s in r0["summaries"] + r1["summaries"]] == [12, 12]
    assert "".join(out for _, out, _ in results).count("Stopped (budget) after 12 steps") == 1


def test_two_machines_resume_a_run_and_end_as_an_uninterrupted_one(
    tmp_path, text_file, one_machine
):
    """Stopped after step 7 (as Ctrl-C stops it), then `--resume` on both machines: the same
    weights as the one-machine run of 12 steps. Here both machines see one folder; on real
    machines the one holding the run directory must become rank 0 again (docs/training.md)."""
    cwd, argv = tmp_path / "shared", train_args(Path("run"), text_file, 12)
    stopped = two_machines(tmp_path, argv, [cwd, cwd], env={"TINYLM_TEST_STOP_AT": "7"})
    for i in (0, 1):
        for rank in (0, 1):
            path = Path(f"{tmp_path}/report-{i}.rank{rank}.json")
            if path.is_file():
                [summary] = json.loads(path.read_text())["summaries"]
                assert summary["reason"] == "interrupted" and summary["step"] == 7, stopped
                path.unlink()
    results = two_machines(tmp_path, [*argv, "--resume"], [cwd, cwd])
    for code, _, err in results:
        assert code == 0, err[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("report-*.rank*.json"))]
    assert len(ranks) == 2 and [s["step"] for r in ranks for s in r["summaries"]] == [12, 12]
    assert ranks[0]["checksums"] == ranks[1]["checksums"] == reports(one_machine[2])[0]["checksums"]


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
