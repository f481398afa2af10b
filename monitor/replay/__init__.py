"""Replay: stored samples through the live target and draft (replayer), and loading the live models."""
