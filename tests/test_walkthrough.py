"""docs/walkthrough.md cannot rot: every `tinylm` command on the page runs, in order, with small
budgets (tiny models, a few dozen steps, local data instead of the hub)."""

import io
import re
import shlex
from pathlib import Path

from conftest import TINY_MODEL, TINY_TEXT_MODEL
from tinylm.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"


def page_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.startswith("tinylm ")]


def small(argv: list[str], words_file, text_file) -> list[str]:
    """A training command with a small budget, a tiny model and local data."""
    if argv[1] != "train":
        return argv
    preset = argv[2]
    text = preset.startswith("pile")
    tiny = [*TINY_MODEL, *TINY_TEXT_MODEL, "tokenizer.vocab_size=400"] if text else TINY_MODEL
    data = text_file if text else words_file
    return [*argv, "--max-steps", "40", "--no-report", "--data", str(data), *tiny]


def test_the_page_holds_its_figures():
    assert "FIGURES:" not in PAGE.read_text()  # every placeholder replaced by measured output


def test_every_command_on_the_page_runs(tmp_path, words_file, text_file, monkeypatch, capsys):
    commands = page_commands()
    assert len(commands) >= 20 and any("chat" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    for line in commands:
        argv = small(shlex.split(line), words_file, text_file)
        if argv[1] == "chat":
            monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nquit\n"))
        try:
            code = main(argv[1:])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        assert code == 0, f"{line}\n{out.err[-2000:]}"
    assert (tmp_path / "words-loss.png").is_file() and (
        tmp_path / "attention-seq2seq.png"
    ).is_file()


def test_the_readme_links_the_walkthrough():
    assert "docs/walkthrough.md" in (PAGE.parents[1] / "README.md").read_text()
