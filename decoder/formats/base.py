"""The registry of engine head formats (see decoder.formats)."""

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
    fallback: bool = False
    """Claims a directory only when no other format does (a plain causal LM: every config has a model_type)."""
    stage: Callable[[Path, Path], None] | None = None
    """Writes the files that make up the head into a new directory, from files alone (a registry
    copies a head with it); None: the directory's top-level files are the head."""


FORMATS: dict[str, HeadFormat] = {}


def register_format(head_format: HeadFormat) -> HeadFormat:
    if head_format.name in FORMATS:
        raise ValueError(f"head format {head_format.name!r} is registered twice")
    FORMATS[head_format.name] = head_format
    return head_format


def detect_format(directory: Path) -> HeadFormat | None:
    """The engine format a directory is in, or None (a specwatch draft, a causal LM, or unknown)."""
    matches = [
        head_format for head_format in FORMATS.values() if not head_format.fallback and head_format.detect(directory)
    ]
    matches = matches or [
        head_format for head_format in FORMATS.values() if head_format.fallback and head_format.detect(directory)
    ]
    if len(matches) > 1:
        raise ValueError(f"{directory} matches several head formats: {[m.name for m in matches]}")
    return matches[0] if matches else None
