"""Draft-head retraining with a gated, reversible redeploy (uses decoder/)."""
