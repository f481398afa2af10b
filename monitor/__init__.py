"""specwatch's application, in layers (imports go down only; pyproject.toml [tool.importlinter]):

    monitor.service      the daemon, the CLI and its commands, replay loop, metrics, report, demo
    monitor.evaluation   drift and health detectors, evaluation, segment status   (beside replay, retrain, alerts)
    monitor.replay       the replayer and the live models
    monitor.intake       records in: parse, redact, segment, sample, store
    monitor.base         config, tables, statistics, failures, shared queries: all that alerts/ and retrain/ import

decoder/ measures, alerts/ notifies, retrain/ trains and redeploys, and the service wires them together.
"""
