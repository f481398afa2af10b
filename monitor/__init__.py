"""specwatch's application: CLI, config, database, intake, replay, statistics, drift.

Only this package knows about the CLI, the config file, the database and the scheduler;
decoder/ measures, retrain/ trains, alerts/ notifies.
"""
