"""The live target and draft named in config, loaded once, with the versions results are kept under."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from decoder import Draft, TargetModel, load_draft, load_target
from monitor.config import ModelsConfig
from monitor.replay import Versions, draft_version

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


def load_live_models(config: ModelsConfig) -> LiveModels:
    target_dir = require_directory(config.target, "models.target")
    draft_dir = require_directory(config.draft, "models.draft")
    target = load_target(target_dir, device=config.device)
    draft = load_draft(draft_dir, target)
    versions = Versions(target=target.fingerprint[:16], draft=draft_version(draft_dir))
    log.info("live models: target %s (%s), draft %s (%s)", target_dir, versions.target, draft_dir, versions.draft)
    return LiveModels(target, draft, versions)
