"""Serving engines' head formats: reading a head an engine serves, writing one it can load.

A format module registers a `HeadFormat`: `detect(directory)` says from config.json alone (no
weights read) whether a directory is in that format; `load(directory, target)` returns a `Draft`
attached to the target, in eval mode, on the target's device and dtype, or raises a DecoderError
that names the mismatch (hidden size, vocabulary, aux-layer ids, tokenizer); `export(draft,
target, out_dir)` writes the draft in the format and returns what it wrote.

    head_format = detect_format(Path("/models/eagle3-llama-8b"))   # None: not an engine format
    draft = head_format.load(directory, target)
    FORMATS["speculators"].export(draft, target, Path("out/speculator"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoder.drafts.base import Draft
from decoder.target import TargetModel


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the directory, the format, and whether an engine is proven to load it."""

    out_dir: Path
    format: str
    engine_loadable: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadFormat:
    name: str
    kinds: tuple[str, ...]  # the draft kinds it can hold
    detect: Callable[[Path], bool]
    load: Callable[[Path, TargetModel], Draft]
    export: Callable[[Draft, TargetModel, Path], ExportResult] | None = None


FORMATS: dict[str, HeadFormat] = {}


def register_format(head_format: HeadFormat) -> HeadFormat:
    if head_format.name in FORMATS:
        raise ValueError(f"head format {head_format.name!r} is registered twice")
    FORMATS[head_format.name] = head_format
    return head_format


def detect_format(directory: Path) -> HeadFormat | None:
    """The engine format a directory is in, or None (a specwatch draft, a causal LM, or unknown)."""
    matches = [head_format for head_format in FORMATS.values() if head_format.detect(directory)]
    if len(matches) > 1:
        raise ValueError(f"{directory} matches several head formats: {[m.name for m in matches]}")
    return matches[0] if matches else None


from decoder.formats import mtp, vllm_medusa  # noqa: E402, F401  (importing a format registers it)

__all__ = ["FORMATS", "ExportResult", "HeadFormat", "detect_format", "register_format"]
