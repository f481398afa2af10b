"""Command groups of the `specwatch` CLI, one module each, registered in display order."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from monitor.service.commands import (
    alerts_cmd,
    config_cmd,
    db_cmd,
    demo_cmd,
    engines_cmd,
    intake_cmd,
    models_cmd,
    replay_cmd,
    report_cmd,
    retrain_cmd,
    run_cmd,
    status_cmd,
)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMAND_GROUPS: list[Register] = [
    demo_cmd.register,
    config_cmd.register,
    db_cmd.register,
    intake_cmd.register,
    models_cmd.register,
    replay_cmd.register,
    status_cmd.register,
    engines_cmd.register,
    report_cmd.register,
    alerts_cmd.register,
    retrain_cmd.register,
    run_cmd.register,
]
