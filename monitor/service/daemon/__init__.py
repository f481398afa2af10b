"""The specwatch daemon: intake, replay, evaluation, alerting and retraining in one process, every loop
a job on one APScheduler BackgroundScheduler, run by systemd (Type=notify, watchdog).

    specwatch run --config /etc/specwatch/config.toml      # monitor/service/systemd/specwatch.service runs this
    curl http://127.0.0.1:9464/readyz                       # /metrics, /healthz and /readyz on metrics.host:port

HTTP, one server on metrics.host:metrics.port: /metrics (prometheus_client's app on the daemon's registry,
404 when metrics.enabled is false), /healthz (200 while the main loop is live, by the watchdog's test;
503 once it stalls), /readyz (200 only when the database answers, the live head is loaded, intake is not
paused and the replay lag is within `daemon.max_replay_lag_s`; the JSON body lists what is not).

Startup: the model directories are checked (missing: refused, exit 2, the path named); /metrics, /healthz
and /readyz are served; the database is opened and migrated, retried with backoff while unreachable
(readiness says so, systemd's start timeout is extended); the live target and draft are loaded (on the
CPU, or not at all with replay paused, when the configured GPU is gone: models.on_device_lost); the jobs
start; intake starts (the file follower as a job, the HTTP endpoint as `intake serve` runs it); READY=1.

Jobs: the quarterly retrain stays in retrain.schedule's SQLAlchemy job store; the interval jobs live in a
memory store on the same scheduler (coalesce, one instance each): replay (drains what is pending and follows
the live head after a deploy or rollback), evaluation + alert dispatch, alert dispatch (every
`alerts.dispatch_interval_s`; it also queues the Alertmanager re-posts that are due), retrain check (resume an
interrupted job, or start a recapture retrain), post-deploy watch, retention (hourly) and the file follower.
A job that raises is logged and runs again at its next tick; while the database is unreachable the jobs back
off together; a full disk pauses file intake with backoff.

Watchdog: WATCHDOG=1 every WATCHDOG_USEC/2 while the scheduler runs and a replay round completed within
`daemon.stall_after_s`. SIGTERM/SIGINT: STOPPING=1, intake stops, running jobs finish (the replay job
after its current round) within `daemon.stop_timeout_s`, else they are abandoned (claims expire); exit 0.

Parts (one module each; all log as "monitor.service.daemon"):

    core.py           Daemon: the state the parts share, and the parts composed
    lifecycle.py      startup in order, sd_notify (READY, STATUS, EXTEND_TIMEOUT), watchdog pings, SIGTERM drain
    jobs.py           the job table (APScheduler), the job runner (stall tracking, failure classes), job work
    device_watch.py   GPU loss: replay on the CPU or paused, the ReplayDeviceLost alert, the GPU's return
    head_watch.py     the live head followed between replay rounds (deploy or rollback), swapped in
    retrains.py       retrain subprocesses: resumed or started when due, reaped
    intake.py         file follower job and HTTP intake, paused on a full disk (the IntakePaused alert)
    health_server.py  /metrics, /healthz, /readyz on one uvicorn server
    health.py         Health and Backoff: what the server and the watchdog report
    systemd.py, logs.py, memory.py, errors.py   sd_notify, log format, glibc heap, StartupRefused
"""

from monitor.service.daemon.core import Daemon
from monitor.service.daemon.errors import StartupRefused
from monitor.service.daemon.logs import configure_logging

__all__ = ["Daemon", "StartupRefused", "configure_logging"]
