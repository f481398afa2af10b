"""Why the daemon refuses to start."""


class StartupRefused(Exception):
    """The daemon cannot start as configured; the message says what to fix (exit code 2)."""
