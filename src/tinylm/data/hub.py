"""Datasets on the Hugging Face hub, streamed through `datasets` (`streaming=True`): records
are read as they arrive and never stored whole, so a dataset larger than memory or disk works.

    hf:NAME            its only configuration (e.g. hf:NeelNanda/pile-10k)
    hf:NAME:CONFIG     one of several (e.g. hf:wikitext:wikitext-103-raw-v1), or data.hf_config

Offline (HF_HUB_OFFLINE=1) a dataset loaded once before is streamed from the local `datasets`
cache. An unreachable hub, a dataset that does not exist, a configuration or split it lacks
are each said in one sentence, within seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

from tinylm.data.files import Tally, first_line
from tinylm.errors import UserError


def parse(source: str, config: str | None) -> tuple[str, str | None]:
    """(dataset name, configuration) of `hf:NAME[:CONFIG]` with data.hf_config beside it."""
    name, _, named = source.removeprefix("hf:").partition(":")
    if not name.strip():
        raise UserError(f"{source} names no dataset; give hf:NAME or hf:NAME:CONFIG.")
    if named and config and named != config:
        raise UserError(
            f"{source} names the configuration '{named}' and data.hf_config is '{config}'; "
            "give one of them."
        )
    return name, named or config or None


def offline() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def check_reachable(name: str) -> None:
    """Ask the hub about `name` (10 s at most), so that no one waits on a dead network."""
    # imported here: huggingface_hub's errors bring httpx, 0.3 s that only hub sources need
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        huggingface_hub.dataset_info(name, timeout=10)
    except RepositoryNotFoundError:
        raise UserError(f"There is no dataset '{name}' on the Hugging Face hub.") from None
    except HfHubHTTPError as e:
        raise UserError(f"The Hugging Face hub refused '{name}' ({first_line(e)}).") from None
    except Exception:
        raise UserError(
            f"Cannot reach the Hugging Face hub to fetch '{name}' (offline?); set "
            "HF_HUB_OFFLINE=1 to use a cached copy, or give a local file or folder with --data."
        ) from None


class HubDataset:
    """One split of a hub dataset: its fingerprint (the dataset's commit, configuration and
    split), and its records' `field` streamed in order."""

    single_file = True

    def __init__(self, source: str, config: str | None, split: str, field: str):
        self.name, self.config = parse(source, config)
        self.split, self.field = split, field
        if not offline():
            check_reachable(self.name)
        self.builder = _builder(self.name, self.config)
        splits = self.builder.info.splits or {}
        if splits and split not in splits:
            raise UserError(
                f"hf:{self.name} has no split '{split}' (it has {', '.join(splits)}); choose one "
                "with data.hf_split."
            )
        self.size = splits[split].num_bytes if split in splits else None
        config_name = self.builder.config.name
        key = "\x00".join((self.name, config_name, str(self.builder.hash), split))
        self.fingerprint = "hf-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self.description = f"hf:{self.name} ({config_name}, split {split})"

    def read(self, tally: Tally) -> Iterator[str]:
        ds = self.builder.as_streaming_dataset(split=self.split)
        if ds.features is not None:
            if self.field not in ds.features:
                raise self.no_field(list(ds.features))
            ds = ds.select_columns([self.field])
        n = 0
        try:
            for n, row in enumerate(ds, 1):  # noqa: B007 (n names the record that failed)
                if n == 1 and self.field not in row:
                    raise self.no_field(list(row))
                text = row[self.field]
                if isinstance(text, str):
                    tally.count("records")
                    tally.done += len(text)
                    yield text
                else:
                    tally.skip(
                        "records", f"with no text in '{self.field}'", self.name, f"record {n}"
                    )
        except UserError:
            raise
        except Exception as e:  # the network, or a damaged file of the dataset
            raise UserError(
                f"Reading hf:{self.name} failed at record {n + 1} ({first_line(e)})."
            ) from None

    def no_field(self, fields: list[str]) -> UserError:
        return UserError(
            f"hf:{self.name} has no field '{self.field}' (it has {', '.join(fields)}); choose one "
            "with data.text_field."
        )


def _builder(name: str, config: str | None):
    """The dataset's builder (from the hub, or offline from the cache), errors in a sentence."""
    import datasets  # 1.5 s to import, for hub sources only

    datasets.logging.set_verbosity_error()  # its "using the cached version" notes
    if not os.isatty(2):
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset_builder(name, config)
    except ConnectionError:
        raise UserError(
            f"hf:{name} is not in the local datasets cache and the hub is offline "
            "(HF_HUB_OFFLINE=1); load it once online, or give a local file or folder with --data."
        ) from None
    except Exception as e:
        text = str(e)
        configs = re.search(r"(?:available configs|Available)[^\[]*(\[[^\]]*\])", text)
        cached = re.search(r"multiple .* configurations in the cache: ([^\n]*)", text)
        if cached and not config:
            raise UserError(
                f"hf:{name} has several configurations in the cache ({cached.group(1)}); name "
                f"one as hf:{name}:CONFIG or with data.hf_config."
            ) from None
        if configs:
            raise UserError(
                f"hf:{name} has no configuration '{config}'; name one of {configs.group(1)} as "
                f"hf:{name}:CONFIG or with data.hf_config."
                if config
                else f"hf:{name} has several configurations {configs.group(1)}; name one as "
                f"hf:{name}:CONFIG or with data.hf_config."
            ) from None
        raise UserError(f"Cannot load hf:{name} ({first_line(e)}).") from None
