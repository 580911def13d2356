"""Both notebooks run end to end in a real Jupyter kernel (nbclient), with small budgets: a
renamed option or a broken cell fails here, not in a reader's hands."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["word_completer", "text_generator"])
def test_the_notebook_runs_in_a_kernel(name, tmp_path, words_file, text_file, monkeypatch):
    monkeypatch.setenv("TINYLM_NOTEBOOK_BUDGET", "small")
    monkeypatch.setenv("TINYLM_NOTEBOOK_WORDS", str(words_file))
    monkeypatch.setenv("TINYLM_NOTEBOOK_TEXT", str(text_file))
    monkeypatch.setenv("TINYLM_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2  # loss curves and attention


@pytest.mark.parametrize("name", ["word_completer", "text_generator"])
def test_the_committed_notebook_shows_its_outputs(name):
    """The README promises the notebooks "with their outputs": every code cell was run, in
    order, without an error, with its pictures, and the file stays small enough to read on
    GitHub."""
    path = NOTEBOOKS / f"{name}.ipynb"
    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 2
    assert path.stat().st_size < 3_000_000
