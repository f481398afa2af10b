"""Head watch: between replay rounds, the live head is loaded when the registry's pointer moved (a deploy
or a rollback). A head that cannot be loaded keeps the old one replaying and makes the daemon not ready."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from decoder import DecoderError, load_draft
from monitor.replay.live_models import LiveModels, ModelsUnavailable, live_draft_dir
from monitor.replay.replayer import Versions
from retrain.registry import head_version

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it


class HeadWatch:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.unloadable_head: Path | None = None

    def follow(self) -> None:
        """Loads the live head when the registry's pointer moved (a deploy or a rollback). A head that
        cannot be loaded keeps the old one replaying and makes the daemon not ready."""
        daemon = self.daemon
        try:
            draft_dir = live_draft_dir(daemon.config)
        except ModelsUnavailable as error:
            self.models_problem(f"live head unusable: {error}")
            return
        if draft_dir is None or draft_dir == daemon.draft_dir:
            daemon.health.models = None
            return
        if draft_dir == self.unloadable_head:
            return  # tried and failed; tried again once the pointer moves
        log.info("the live head moved to %s (deploy or rollback): loading it", draft_dir)
        try:
            self.swap(draft_dir)
        except (DecoderError, OSError) as error:
            self.unloadable_head = draft_dir
            self.models_problem(f"live head {draft_dir} cannot be loaded ({error}); still replaying {daemon.draft_dir}")

    def models_problem(self, problem: str) -> None:
        """Logged once when it appears or changes (the replay job checks every round); /readyz shows it."""
        if problem != self.daemon.health.models:
            log.error("%s", problem)
        self.daemon.health.models = problem

    def swap(self, draft_dir: Path) -> None:
        daemon = self.daemon
        current = daemon.replay_loop.models
        draft = load_draft(draft_dir, current.target)
        versions = Versions(target=current.versions.target, draft=head_version(draft_dir))
        daemon.use_models(LiveModels(current.target, draft, versions))
        daemon.draft_dir, daemon.health.models = draft_dir, None
        log.info("now replaying draft %s (was %s)", versions.draft, current.versions.draft)
