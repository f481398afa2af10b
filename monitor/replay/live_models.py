"""The live target and draft named in config, loaded once, with the versions results are kept under."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.base.config import Config, ModelsConfig
from monitor.replay.claims import Versions
from retrain.registry import HeadRegistry, RegistryError, head_version

if TYPE_CHECKING:
    from decoder import Draft, TargetModel

log = logging.getLogger(__name__)


class ModelsUnavailable(Exception):
    """A configured model directory is missing or unusable; the message names the path."""


@dataclass(frozen=True)
class LiveModels:
    target: TargetModel
    draft: Draft
    versions: Versions


def require_directory(path: Path | None, key: str) -> Path:
    if path is None:
        raise ModelsUnavailable(
            f"{key} is not set: point it at a model directory "
            "(or build reference models: specwatch models build-reference)"
        )
    if not path.is_dir():
        raise ModelsUnavailable(f"{key} = {path}: no such directory")
    return path


ENGINE_VERSION = "engine"
"""what findings are filed under in GPU-free mode when the registry knows no live head"""


def version_without_models(config: Config) -> str:
    """The live head's name when nothing is replayed (GPU-free mode): the registry's live version (the head
    the engine should serve, when one was imported or deployed), else ENGINE_VERSION."""
    try:
        return HeadRegistry(config.heads_dir).live_version() or ENGINE_VERSION
    except RegistryError as error:
        raise ModelsUnavailable(str(error)) from None


def live_draft_dir(config: Config) -> Path | None:
    """The live head: the head registry's live pointer, which `models.draft` seeds on first use (so
    every head, the seed included, has one name: its registry version; an MTP layer is kept without
    the target that carries it). `models.draft` itself when it is not a directory (the caller names it)."""
    registry = HeadRegistry(config.heads_dir)
    try:
        live = registry.live_path()
        if live is None and config.models.draft is not None and config.models.draft.is_dir():
            registry.ensure_seed(config.models.draft)
            live = registry.live_path()
    except RegistryError as error:
        raise ModelsUnavailable(str(error)) from None
    return live or config.models.draft


def load_live_models(config: ModelsConfig, draft_dir: Path | None = None) -> LiveModels:
    """The target and the live draft (`draft_dir` when given, e.g. from live_draft_dir, else models.draft)."""
    from decoder import load_draft, load_target  # torch: only loading models pays for it

    target_dir = require_directory(config.target, "models.target")
    draft_dir = require_directory(draft_dir or config.draft, "models.draft")
    target = load_target(target_dir, device=config.device)
    draft = load_draft(draft_dir, target)
    versions = Versions(target=target.fingerprint[:16], draft=head_version(draft_dir))
    log.info("live models: target %s (%s), draft %s (%s)", target_dir, versions.target, draft_dir, versions.draft)
    return LiveModels(target, draft, versions)
