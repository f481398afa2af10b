"""The service: the daemon, the CLI and its commands, the replay loop, metrics, the report, the demo."""
