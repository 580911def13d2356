"""The README and docs/ cannot rot: every shell command (```bash blocks) and Python snippet
(```python blocks) on each page runs, in order, with small budgets (tiny models, a few dozen
steps, local data instead of the hub), and the install steps a page gives run in a clean
virtual environment. A page's snippets share one namespace, as in a notebook, and its
`tinylm serve` runs in the background while the rest of the page talks to it. Commands of
programs that are not on the machines the tests run on (llama.cpp's binaries, Ollama) are in
```shell blocks, which are shown, not run (their checks run through llama-cpp-python in
tests/test_gguf.py); so are benchmarks (`python bench/...`), which take minutes by design.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from small_training import small_train

from conftest import TINY_MODEL, TINY_TEXT_MODEL
from tinylm import api

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY_TEXT = [*TINY_MODEL, *TINY_TEXT_MODEL, "tokenizer.vocab_size=400"]


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", page.read_text(), flags=re.S)


def lines(text: str) -> list[str]:
    """Shell lines, continuations joined."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """Runs one page's commands and snippets in a folder of its own."""

    def __init__(self, folder: Path, words_file: Path, text_file: Path):
        self.folder, self.words, self.text = folder, words_file, text_file
        self.port = free_port()
        self.servers: list[subprocess.Popen] = []
        self.namespace: dict = {}
        (folder / "my_texts").mkdir()
        shutil.copy(text_file, folder / "my_texts" / "texts.jsonl")
        # this checkout's tinylm, not another one installed in the environment
        path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])
        self.env = {**os.environ, "PYTHONPATH": path}

    def here(self, text: str) -> str:
        """The page's text with this run's port for the server's."""
        return text.replace(":8000", f":{self.port}")

    def shell(self, line: str) -> None:
        argv = shlex.split(self.here(line), comments=True)
        background = argv[-1:] == ["&"] or argv[:2] == ["tinylm", "serve"]
        argv = [a for a in argv if a != "&"]
        if argv[0] in ("python3", "pip") or argv[:2] == ["python", "-m"]:
            return  # install steps: run in a clean environment (test_a_newcomers_install)
        if argv[0] == "python" and argv[1].startswith("bench/"):
            return  # a benchmark: minutes by design
        if argv[0] == "tinylm":
            argv = [sys.executable, "-m", "tinylm.cli", *self.small(argv[1:])]
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *self.small(argv[1:])]
        elif argv[0] == "lm_eval":
            argv = [str(Path(sys.executable).parent / "lm_eval"), *argv[1:]]
        if background:
            self.serve(argv)
            return
        done = subprocess.run(
            argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    def small(self, argv: list[str]) -> list[str]:
        """A training command with a small budget, a tiny model and local data."""
        if "train" not in argv:
            return argv + (["--port", str(self.port)] if "serve" in argv else [])
        i = argv.index("train")
        preset = argv[i + 1] if len(argv) > i + 1 and not argv[i + 1].startswith("-") else ""
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a == "--time":
                skip = True
                continue
            out.append(a)
        if "--max-steps" in out:
            k = out.index("--max-steps")
            out[k + 1] = str(max(4, int(out[k + 1]) // 10))
        else:
            out += ["--max-steps", "30"]
        if "--resume" in out:
            return out
        text = preset.startswith("pile")
        if "--data" not in out:
            out += ["--data", str(self.text if text else self.words)]
        return [*out, "--no-report", *(TINY_TEXT if text else TINY_MODEL)]

    def serve(self, argv: list[str]) -> None:
        self.servers.append(subprocess.Popen(argv, cwd=self.folder, env=self.env))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise AssertionError("the page's server did not start")

    def python(self, code: str) -> None:
        """A snippet, in the page's namespace (`tinylm.train` held to a small budget)."""
        exec(compile(self.here(code), "snippet", "exec"), self.namespace)

    def close(self) -> None:
        for server in self.servers:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_snippet_on_the_page_runs(
    page, tmp_path, words_file, text_file, monkeypatch
):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SMALL_WORDS", str(words_file))
    monkeypatch.setenv("SMALL_TEXT", str(text_file))
    monkeypatch.setattr(api, "train", small_train)
    monkeypatch.chdir(tmp_path)
    runner = Page(tmp_path, words_file, text_file)
    runner.env.update(
        TINYLM_CACHE=str(tmp_path / "cache"), SMALL_WORDS=str(words_file), SMALL_TEXT=str(text_file)
    )
    try:
        for language, text in blocks(page):
            if language == "bash":
                for line in lines(text):
                    runner.shell(line)
            elif language == "python":
                runner.python(text)
            elif language == "yaml" and "my_tasks/" in text:  # lm-eval's task file, as shown
                path = tmp_path / "my_tasks" / "my_docs.yaml"
                path.parent.mkdir(exist_ok=True)
                path.write_text(
                    text.replace("/path/to/docs.jsonl", str(few_documents(tmp_path, text_file)))
                )
    finally:
        runner.close()


def few_documents(folder: Path, text_file: Path) -> Path:
    """The first five documents of the test corpus: enough for a task, quick to score."""
    path = folder / "docs.jsonl"
    path.write_text("".join(text_file.read_text().splitlines(keepends=True)[:5]))
    return path


def test_the_pages_hold_measured_figures():
    for page in PAGES:
        assert "MEASURE:" not in page.read_text(), page.name  # every placeholder filled


def test_a_newcomers_install_runs_the_main_job_and_lm_eval(tmp_path, words_file, text_file):
    """In a virtual environment of its own, the README's install steps and docs/lm-eval.md's
    give a working `tinylm train` and `lm_eval --model hf` (a package a page forgot to install
    fails here)."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
    readme = (ROOT / "README.md").read_text()
    main = re.search(r"pip install torch==\S+ && pip install -e \. && tinylm train words", readme)
    assert main, "the README's first command is the install and the main job"
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)
    subprocess.run([*pip, "-e", str(ROOT)], check=True, timeout=900)
    out = tmp_path / "run"
    train = [
        str(env_dir / "bin" / "tinylm"),
        "train",
        "pile-bpe",
        "--data",
        str(text_file),
        "--out",
        str(out),
        "--max-steps",
        "20",
        "--no-report",
        *TINY_TEXT,
    ]
    subprocess.run(
        train, check=True, timeout=600, env={**os.environ, "TINYLM_CACHE": str(tmp_path)}
    )
    [install] = [
        line
        for _, text in blocks(ROOT / "docs" / "lm-eval.md")
        for line in lines(text)
        if line.startswith("pip install")
    ]
    subprocess.run([*pip, *shlex.split(install)[2:]], check=True, timeout=900)
    task = tmp_path / "tasks" / "my_docs.yaml"
    task.parent.mkdir()
    [yaml] = [text for lang, text in blocks(ROOT / "docs" / "lm-eval.md") if lang == "yaml"]
    task.write_text(yaml.replace("/path/to/docs.jsonl", str(few_documents(tmp_path, text_file))))
    lm_eval = [
        str(env_dir / "bin" / "lm_eval"),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={out}",
        "--device",
        "cpu",
        "--include_path",
        str(task.parent),
        "--tasks",
        "my_docs",
        "--limit",
        "2",
    ]
    done = subprocess.run(lm_eval, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
