"""Reading and writing the files of an engine-format directory: config.json, safetensors, tokenizer.

Every failure is a DraftFormatError (or TokenizerMismatchError) naming the file and what is wrong,
so a truncated download or a foreign directory never surfaces as a bare library exception.

    config = read_config(directory)
    tensors = read_tensors(directory, prefix="model.layers.2.")
    write_tensors(out_dir / "model.safetensors", tensors)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from decoder.errors import DraftFormatError, TokenizerMismatchError
from decoder.files import write_atomically
from decoder.target import TargetModel, tokenizer_fingerprint

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def read_config_if_any(directory: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when it is missing or not a JSON object (for `detect`)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_config(directory: Path) -> dict[str, Any]:
    config = read_config_if_any(directory)
    if config is None:
        raise DraftFormatError(f"{directory} has no readable {CONFIG_FILE} (a JSON object)")
    return config


def config_int(config: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DraftFormatError(f"{where / CONFIG_FILE}: {key} must be an integer, found {value!r}")
    return value


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, else every *.safetensors."""
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [directory / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DraftFormatError(f"{index} is not a safetensors index: {exc}") from None
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise DraftFormatError(f"{directory} holds no *.safetensors weights")
    return files


def read_tensors(directory: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix`, from all weight files, on the CPU."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        if not path.is_file():
            raise DraftFormatError(f"{path} is named by the checkpoint index but missing")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                    if name.startswith(prefix):
                        tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise DraftFormatError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
    return tensors


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file with these tensors (CPU, contiguous); the same tensors give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}, str(path))
    return path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """config.json with sorted keys, so equal configs are equal bytes."""
    text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_atomically(path, text.encode("utf-8"))


def check_tokenizer(directory: Path, target: TargetModel) -> None:
    """Refuses a directory whose own tokenizer (if it ships one) differs from the target's."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise DraftFormatError(f"{directory} ships a tokenizer that does not load: {exc}") from None
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != target.tokenizer_fingerprint:
        raise TokenizerMismatchError(target.tokenizer_fingerprint, fingerprint, str(directory))


def check_sizes(directory: Path, what: str, hidden_size: int, vocab_size: int, target: TargetModel) -> None:
    """Refuses a head whose hidden size or vocabulary differs from the target's, naming both."""
    for name, value, expected in (
        ("hidden_size", hidden_size, target.hidden_size),
        ("vocab_size", vocab_size, target.vocab_size),
    ):
        if value != expected:
            raise DraftFormatError(f"{what} at {directory} has {name} {value}, but the target's is {expected}")


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Loads exactly the module's tensors (shapes included), or names what is missing, extra or misshapen."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    )
    if missing or unexpected or misshapen:
        raise DraftFormatError(
            f"weights at {where} do not fit: missing {missing or 'none'}; unexpected {unexpected or 'none'}; "
            f"wrong shape {misshapen or 'none'}"
        )
    module.load_state_dict(state)
