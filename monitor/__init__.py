"""specwatch's application: CLI, config, database, intake, replay, statistics, drift, health.

The config models (monitor.base.config), the tables (monitor.base.db) and the statistics (monitor.base.stats) are
the shared base; decoder/ measures, alerts/ notifies, retrain/ trains and redeploys, and the
commands here wire them together.
"""
