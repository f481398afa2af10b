"""Device watch: a GPU lost mid-round moves replay to the CPU or pauses it, with the ReplayDeviceLost finding."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine


class GpuFailsMidRound:
    """A replay loop whose device fails in the middle of a round, as a GPU that fell off the bus does:
    torch raises a RuntimeError naming the CUDA error."""

    def step(self) -> bool:
        raise RuntimeError("CUDA error: unspecified launch failure")


@pytest.mark.parametrize("policy", ["cpu", "pause"])
def test_gpu_lost_mid_replay_moves_replay_to_the_cpu_or_pauses_it(
    policy: str, engine: Engine, reference_models: Path, tmp_path: Path
) -> None:
    from monitor.base.config import Config, ModelsConfig, StorageConfig
    from monitor.replay.live_models import live_draft_dir
    from monitor.service.daemon import Daemon
    from monitor.service.metrics import Metrics

    models = ModelsConfig(
        target=reference_models / "target", draft=reference_models / "drafts" / "eagle", on_device_lost=policy
    )
    config = Config(models=models, storage=StorageConfig(data_dir=tmp_path))
    daemon = Daemon(config, tmp_path / "config.toml")
    daemon.engine, daemon.draft_dir = engine, live_draft_dir(config)  # as startup finds it: the registry's seed
    daemon.metrics = Metrics([])
    daemon.loop = GpuFailsMidRound()  # type: ignore[assignment]
    daemon.jobs.replay_job()
    assert daemon.health.device is not None and "CUDA error" in daemon.health.device
    if policy == "cpu":
        assert daemon.loop is not None and str(daemon.loop.models.target.device) == "cpu"
        assert daemon.health.models is None
    else:
        assert daemon.loop is None and daemon.health.models is not None
        assert daemon.health.models.startswith("replay paused")
    assert [finding.detector for finding in daemon.jobs.daemon_findings()] == ["device_lost"]
