"""A model's `config.json`, from a local directory or the Hugging Face Hub; never weights.

Read as vLLM reads it (transformers_utils/config.py): `config.json`, and where that has no
`quantization_config`, a ModelOpt `hf_quant_config.json` beside it. A HF id is fetched with
`huggingface_hub` into its cache (`HF_TOKEN` for gated or private repositories;
`HF_HUB_OFFLINE=1` reads the cache only). Every failure is a ValueError with a one-line
message that names the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_config"]

_CONFIG = "config.json"
_QUANT_CONFIG = "hf_quant_config.json"


def load_config(
    name: str, *, catalog: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(config.json, hf_quant_config.json or None) of the directory or HF id `name`.

    `catalog` lists the catalog's names for the message when `name` is found nowhere.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        config_path = path / _CONFIG
        if not config_path.is_file():
            raise ValueError(f"model {name}: the directory has no {_CONFIG}")
        config = _read(config_path, name)
        quant_path = path / _QUANT_CONFIG
        has_quant = "quantization_config" in config or not quant_path.is_file()
        return config, None if has_quant else _read(quant_path, name)
    not_found = f"unknown model {name!r}: not in the catalog ({', '.join(catalog)})"
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        raise ValueError(f"{not_found}, and not a directory holding {_CONFIG}")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"{not_found}, not a directory, and not a Hugging Face id") from None
    return _from_hub(name, not_found)


def _from_hub(repo_id: str, not_found: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    token = os.environ.get("HF_TOKEN")
    try:
        with _quiet_hub():
            config_path = Path(hf_hub_download(repo_id, _CONFIG, token=token))
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base in huggingface_hub 1+
        raise ValueError(
            f"{not_found}, and its {_CONFIG} is not in the Hugging Face cache while the Hub "
            "cannot be reached (offline?); pass a local directory holding it"
        ) from None
    except GatedRepoError:  # before RepositoryNotFoundError, its base
        raise ValueError(
            f"model {repo_id}: the repository is gated on the Hugging Face Hub; set HF_TOKEN "
            f"to an account with access, or pass a local directory holding its {_CONFIG}"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{not_found}, and the Hugging Face Hub has no such repository (private? set HF_TOKEN)"
        ) from None
    except EntryNotFoundError:
        raise ValueError(f"model {repo_id}: the Hub repository has no {_CONFIG}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise ValueError(
            f"model {repo_id}: the Hugging Face Hub refused its {_CONFIG} (HTTP {status})"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model {repo_id}: cannot fetch its {_CONFIG}: {' '.join(str(err).split())}"
        ) from None
    config = _read(config_path, repo_id)
    if "quantization_config" in config:
        return config, None
    # Older ModelOpt checkpoints keep their FP8 settings here; most repositories have none.
    quant = None
    with contextlib.suppress(Exception), _quiet_hub():
        quant = _read(Path(hf_hub_download(repo_id, _QUANT_CONFIG, token=token)), repo_id)
    return config, quant


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Keep huggingface_hub's retry warnings off stderr: the caller's error is one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model {name}: cannot read {path.name}: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"model {name}: {path.name} is not a JSON object")
    return data
