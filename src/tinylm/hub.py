"""Run directories on the Hugging Face Hub: `hf:OWNER/NAME` names a run pushed there, which
every command that takes a RUN takes too, and `push` sends the files a user shares.

`hf:OWNER/NAME` is downloaded once into the Hugging Face cache (snapshot_download; HF_HOME or
HF_HUB_CACHE say where) and then read from there as any run directory: a name already in the
cache is used without asking the Hub, online or not (`hf download OWNER/NAME` fetches a newer
version into the cache).

Offline, both fail within seconds, in one sentence. huggingface_hub's HTTP client waits
without a time limit by default, and snapshot_download asks the Hub for the repository without
one, so a question with a limit of TIMEOUT seconds (model_info) goes first; with HF_HUB_OFFLINE
set nothing is asked at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from tinylm.errors import UserError

# huggingface_hub is imported where the Hub is used: with httpx it costs 0.3-0.6 s, which every
# command opening a run would pay (runs.py asks `is_hub` of every RUN)

PREFIX = "hf:"
TIMEOUT = 10.0  # seconds to wait for the Hub's first answer
# What a push sends: what it takes to use the model (weights, configs, tokenizer, GGUF export
# and Modelfile), to judge it (the card and what it cites: card.json, eval.json, loss.png) and
# to train it again (tinylm.yaml). Never the resume checkpoint, the split, the metrics log,
# the trackers' files or a temporary (a hidden file).
SHARED = (
    "README.md",
    "card.json",
    "tinylm.yaml",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "eval.json",
    "loss.png",
    "*.gguf",
    "Modelfile",
)


def is_hub(path) -> bool:
    return str(path).startswith(PREFIX)


def repo_id(name: str) -> str:
    """OWNER/NAME from `hf:OWNER/NAME` (or OWNER/NAME itself), checked."""
    repo = str(name).removeprefix(PREFIX)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo) or ".." in repo:
        raise UserError(f"'{name}' is not a Hub model repository; write OWNER/NAME, e.g. me/words.")
    return repo


def local_copy(path) -> Path:
    """The run directory `path` names: itself, or for hf:OWNER/NAME its copy in the Hugging
    Face cache, downloaded the first time."""
    if not is_hub(path):
        return Path(path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    name, repo = str(path), repo_id(path)
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached, or cached in part
        pass
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset it to "
            "download it once."
        )
    if not ask(repo, f"download {name}"):
        raise UserError(
            f"There is no model {repo} on the Hugging Face Hub (or it is private: log in with "
            "`hf auth login`)."
        )
    try:
        return Path(snapshot_download(repo, etag_timeout=TIMEOUT))
    except Exception as e:
        raise UserError(f"Downloading {name} failed ({first_line(e)}).") from None


def ask(repo: str, doing: str, token: str | None = None) -> bool:
    """Whether `repo` is on the Hub, answered within TIMEOUT seconds; one sentence when the
    Hub cannot be reached or refuses."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(repo, timeout=TIMEOUT, token=token)
        return True
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except HfHubHTTPError as e:
        raise UserError(f"The Hugging Face Hub refused to {doing} ({first_line(e)}).") from None
    except Exception:
        raise UserError(
            f"Cannot reach the Hugging Face Hub to {doing} (offline?); try again when online."
        ) from None


def shared_files(run_dir: Path) -> list[str]:
    """The files of `run_dir` that a push sends (SHARED), by name."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").is_file():
        raise UserError(f"{run_dir} has no trained weights to share (no model.safetensors).")
    found = {p.name for pattern in SHARED for p in run_dir.glob(pattern) if p.is_file()}
    return sorted(n for n in found if not n.startswith("."))


def login(repo: str) -> str:
    """The user's token, once the Hub is found reachable: checked before any work."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set, and pushing needs the Hugging Face Hub; unset it.")
    token = huggingface_hub.get_token()
    if token is None:
        raise UserError("Log in to the Hugging Face Hub first: `hf auth login`, or set HF_TOKEN.")
    ask(repo, f"push to {repo}", token)
    return token


def upload(run_dir: Path, files: list[str], repo: str, token: str, private: bool) -> str:
    """Send `files` of `run_dir` to the model repository `repo` (created if need be) in one
    commit; return its address."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(run_dir / n)) for n in files]
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.create_commit(repo, ops, commit_message=f"tinylm push of {Path(run_dir).name}")
    except HfHubHTTPError as e:
        raise UserError(
            f"The Hugging Face Hub refused the push to {repo} ({first_line(e)})."
        ) from None
    return str(url)


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
