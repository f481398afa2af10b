"""Evaluation: drift and health detectors, the evaluation run that stores findings, segment status."""
