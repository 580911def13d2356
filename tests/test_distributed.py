import json
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_stay_in_sync_and_only_rank_0_writes(tmp_path, text_file):
    out, report = tmp_path / "ddp", tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "ddp_worker.py"), str(out), str(text_file),
           str(report)]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["summary"]["step"] == r1["summary"]["step"] == 12
    assert r0["checksums"] == r1["checksums"]  # DDP kept the replicas identical
    assert r0["writes"] and not r1["writes"]  # only rank 0 touched the run directory
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in line and "val_loss" not in line]  # fmt: skip
    assert steps == sorted(set(steps))  # one writer: no duplicated log lines
    # the tokens counted are those of both ranks
    assert r0["summary"]["tokens"] == 12 * 2 * (512 // 32) * 32
