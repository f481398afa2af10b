"""The operator stack on real parts: monitor/prometheus/specwatch.rules.yml through promtool (check and unit
tests), and a real Prometheus (Debian's prometheus 2.42 at /usr/bin/prometheus) that scrapes the daemon's
/metrics server, fed from a real database the way the daemon feeds it, evaluates the rules, and answers every
query of monitor/dashboards/specwatch.json with data. The tests that need Prometheus skip, with the reason,
where it is not installed (.ci/run installs it); the dashboard's own checks run everywhere.

    .venv/bin/pytest tests/monitor/service/test_prometheus_stack.py
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.config import (
    ALERT_RULES_DEFAULT,
    Config,
    EngineEndpointConfig,
    MetricsConfig,
    Secret,
    StorageConfig,
)
from monitor.base.db import ReplayResult, create_db_engine, upgrade
from monitor.base.results import HISTOGRAM_ESTIMATE, PER_STEP, replay_backlog
from monitor.dashboards import build
from monitor.evaluation.evaluate import evaluate
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.replayer import ReplayReport, Versions
from monitor.service.daemon import Daemon
from monitor.service.daemon.health_server import start_http
from monitor.service.daemon.intake import pause_intake
from monitor.service.daemon.systemd import Systemd
from monitor.service.demo_traffic import traffic
from monitor.service.metrics import MetricsServer, publish_evaluation
from tests.monitor.intake.test_engine_metrics import VllmMetricsServer, VllmSpecCounters
from tests.monitor.stored_counts import HIGH, LOW, store_traffic

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "monitor" / "prometheus" / "specwatch.rules.yml"
RULE_TESTS = Path(__file__).with_name("specwatch.rules.test.yml")
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)",
)

Json = dict[str, Any]
DRAFT, TARGET = "draft-a", "target"  # the versions tests.monitor.stored_counts stores results under
LOW_SEGMENT, HIGH_SEGMENT = "region=eu/lang=zh", "region=eu/lang=en"
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval at a 1 s scrape interval is 4 s or more
WAIT_S = 20.0


# ---- the dashboard's file and its schema version -----------------------------------------------------------


def dashboard() -> Json:
    return dict(json.loads(build.DASHBOARD_FILE.read_text(encoding="utf-8")))


def test_the_committed_dashboard_is_what_the_builder_writes() -> None:
    assert build.DASHBOARD_FILE.read_text(encoding="utf-8") == build.rendered(), (
        "regenerate: python -m monitor.dashboards.build"
    )
    assert build.main(["--check"]) == 0


def all_panels(model: Json) -> Iterator[Json]:
    for item in model.get("panels", []):
        yield item
        yield from item.get("panels", [])


VARIABLE_TYPES = {"query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"}
LINK_KEYS = {"title", "type", "icon", "tooltip", "url", "tags", "asDropdown", "targetBlank", "includeVars", "keepTime"}


def schema_problems(model: Json) -> list[str]:
    """What Grafana's classic dashboard model (kinds/dashboard/dashboard_kind.cue) requires at schemaVersion 39,
    as far as this dashboard uses it, plus the layout: every panel within the 24 columns, none overlapping."""
    problems = []
    if model.get("schemaVersion") != build.SCHEMA_VERSION:
        problems.append(f"schemaVersion {model.get('schemaVersion')!r}, not {build.SCHEMA_VERSION}")
    if not isinstance(model.get("uid"), str) or not 8 <= len(model["uid"]) <= 40:
        problems.append("uid: a string of 8 to 40 characters")
    if model.get("graphTooltip") not in (0, 1, 2):
        problems.append("graphTooltip: 0, 1 or 2")
    ids = [item.get("id") for item in all_panels(model)]
    if len(ids) != len(set(ids)) or not all(isinstance(number, int) for number in ids):
        problems.append("panel ids: unique integers")
    for item in all_panels(model):
        problems += [f"panel {item.get('id')} {item.get('title')!r}: {problem}" for problem in panel_problems(item)]
    problems += overlaps(model["panels"])
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") not in VARIABLE_TYPES or not variable.get("name"):
            problems.append(f"variable {variable.get('name')!r}: a type of {sorted(VARIABLE_TYPES)} and a name")
        if variable.get("hide", 0) not in (0, 1, 2):
            problems.append(f"variable {variable.get('name')!r}: hide 0, 1 or 2")
    for annotation in model.get("annotations", {}).get("list", []):
        missing = {"name", "datasource", "enable", "iconColor"} - set(annotation)
        if missing:
            problems.append(f"annotation {annotation.get('name')!r} lacks {sorted(missing)}")
    for link in model.get("links", []):
        if LINK_KEYS - set(link) or link.get("type") not in ("link", "dashboards"):
            problems.append(f"link {link.get('title')!r}: needs {sorted(LINK_KEYS)}, type link or dashboards")
    return problems


def panel_problems(item: Json) -> list[str]:
    problems = []
    if not item.get("type"):
        problems.append("type may not be empty")
    grid = item.get("gridPos", {})
    h, w, x, y = (grid.get(key) for key in "hwxy")
    if not (isinstance(h, int) and h > 0 and isinstance(w, int) and 0 < w <= 24):
        problems.append(f"gridPos h > 0 and 0 < w <= 24: {grid}")
    elif not (isinstance(x, int) and 0 <= x < 24 and x + w <= 24 and isinstance(y, int) and y >= 0):
        problems.append(f"gridPos within the 24 columns: {grid}")
    if item["type"] == "row":
        if not isinstance(item.get("collapsed"), bool) or not isinstance(item.get("panels"), list):
            problems.append("a row has collapsed and panels")
        return problems
    targets = item.get("targets", [])
    references = [target.get("refId") for target in targets]
    if len(set(references)) != len(references) or not all(references):
        problems.append(f"targets need distinct refIds: {references}")
    if any(not target.get("expr") for target in targets):
        problems.append("a Prometheus target without expr")
    field_config = item.get("fieldConfig", {"defaults": {}, "overrides": []})
    if set(field_config) != {"defaults", "overrides"}:
        problems.append("fieldConfig: defaults and overrides")
    for override in field_config.get("overrides", []):
        if "id" not in override.get("matcher", {}) or any("id" not in p for p in override.get("properties", [])):
            problems.append(f"override without matcher or property ids: {override}")
    steps = field_config.get("defaults", {}).get("thresholds", {}).get("steps", [{"value": None, "color": "x"}])
    if steps[0].get("value") is not None or any("color" not in step for step in steps):
        problems.append("thresholds start at null (-Infinity) and each has a color")
    legend = item.get("options", {}).get("legend", {})
    if legend.get("displayMode") == "hidden":  # schemaVersion 37 moved this to showLegend: false
        problems.append("legend.displayMode 'hidden' is pre-37: use showLegend")
    if item["type"] == "table" and "displayMode" in field_config.get("defaults", {}).get("custom", {}):
        problems.append("table custom.displayMode is pre-38: use cellOptions")
    return problems


def overlaps(panels: list[Json]) -> list[str]:
    owner: dict[tuple[int, int], int] = {}
    problems = []
    for item in panels:
        x, y, w, h = (item["gridPos"][key] for key in "xywh")
        cells = {(row, column) for row in range(y, y + h) for column in range(x, x + w)}
        taken = {owner[cell] for cell in cells if cell in owner}
        if taken:
            problems.append(f"panel {item['id']} overlaps panel {sorted(taken)}")
        owner.update(dict.fromkeys(cells, item["id"]))
    return problems


def test_the_dashboard_has_what_its_schema_version_requires() -> None:
    assert schema_problems(dashboard()) == []


def test_the_schema_check_finds_what_grafana_would_refuse() -> None:
    broken = copy.deepcopy(dashboard())
    broken["schemaVersion"] = 17
    first, second = broken["panels"][0], broken["panels"][1]
    first["gridPos"]["w"] = 30
    second["gridPos"] = dict(first["gridPos"], w=6)
    second["targets"][0]["refId"] = ""
    broken["links"][0].pop("keepTime")
    problems = "\n".join(schema_problems(broken))
    assert "schemaVersion 17" in problems and "0 < w <= 24" in problems and "refIds" in problems
    assert "overlaps" in problems and "link" in problems


def test_the_dashboard_links_to_vllms_dashboard_without_copying_it() -> None:
    model = dashboard()
    assert any(link["url"] == f"/d/{build.VLLM_DASHBOARD_UID}" for link in model["links"])
    assert any(link["url"] == build.VLLM_DASHBOARD_SOURCE for link in model["links"])
    assert not any("vllm:" in expr for _, expr in dashboard_queries(model)), "vLLM's own series are its dashboard's"


# ---- the rules through promtool -----------------------------------------------------------------------------


def rules() -> list[Json]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@needs_prometheus
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    checked = run(PROMTOOL, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@needs_prometheus
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert PROMTOOL is not None
    tested = run(PROMTOOL, "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_alert_rules_mirror_the_daemons_own() -> None:
    """Same names and severities as config.toml's [alerts.rules], so routes and inhibitions serve both."""
    alerts = {rule["alert"]: rule["labels"]["severity"] for rule in rules() if "alert" in rule}
    assert {"AcceptanceBelowThreshold", "ReplayStalled", "IntakePaused", "ReplayDeviceLost"} <= set(alerts)
    assert alerts == {name: ALERT_RULES_DEFAULT[name][1] for name in alerts}
    assert build.alert_names() == list(alerts)


# ---- a running specwatch, scraped by a real Prometheus -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


ENGINE_STEPS = [(4, 4), (4, 2), (4, 0), (4, 3)] * 25  # verify steps as (drafted, accepted)


@pytest.fixture(scope="module")
def vllm() -> Iterator[VllmMetricsServer]:
    """A serving engine's /metrics with vLLM's spec-decode counters, which specwatch scrapes."""
    server = VllmMetricsServer()
    server.registry = VllmSpecCounters(window_k=4).registry
    yield server
    server.close()


def engine_traffic(daemon: Daemon, vllm: VllmMetricsServer) -> None:
    """The daemon's engine-scrape job before and after the engine served requests: the first scrape of a
    series is its baseline, the second stores the increase."""
    counters = VllmSpecCounters(window_k=4)
    counters.add_series("target", "0")
    vllm.registry = counters.registry
    daemon.jobs.scrape_and_observe_engine("vllm-a")
    counters.record("target", "0", ENGINE_STEPS)
    daemon.jobs.scrape_and_observe_engine("vllm-a")


def stored_rows(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [
            {"mode": row.mode, "counts": row.counts, "skipped": row.skipped}
            for row in session.scalars(select(ReplayResult))
        ]


def feed(daemon: Daemon, engine: Engine, config: Config, vllm: VllmMetricsServer) -> None:
    """What the daemon's jobs put on its metrics, from a real database: stored replays and engine reports
    (lang=zh confidently below the threshold), intake with quarantined records, an engine scrape, the backlog,
    the live draft, and intake paused on a full disk."""
    now = datetime.now(UTC)
    store_traffic(engine, HIGH_SEGMENT, 40, now=now, shadow=HIGH, live=HIGH, draft_version=DRAFT, basis=PER_STEP)
    store_traffic(engine, LOW_SEGMENT, 40, now=now, shadow=LOW, live=LOW, draft_version=DRAFT, basis=HISTOGRAM_ESTIMATE)
    metrics = daemon.meters
    records = [RawRecord(f"line {i}", value=value) for i, value in enumerate(traffic(6, {"en": 1.0}, seed=3))]
    records.append(RawRecord("line 99", data=b"{not json"))
    metrics.record_intake(
        "gateway.jsonl", IntakePipeline(config, engine, Secret("salt")).ingest("gateway.jsonl", records)
    )
    metrics.record_replay(stored_rows(engine), ReplayReport(claimed=80, stored=80, tokens=4000, seconds=2.0))
    engine_traffic(daemon, vllm)
    publish_evaluation(metrics, config, engine, evaluate(config, engine, DRAFT))
    metrics.observe_backlog(*replay_backlog(engine, DRAFT, TARGET))
    metrics.observe_live_draft(Versions(target=TARGET, draft=DRAFT))
    pause_intake(daemon.health.intake, "no space left on device")


@pytest.fixture(scope="module")
def specwatch(tmp_path_factory: pytest.TempPathFactory, vllm: VllmMetricsServer) -> Iterator[MetricsServer]:
    """The daemon's /metrics, /healthz, /readyz server on 127.0.0.1, its metrics fed as its jobs feed them."""
    tmp = tmp_path_factory.mktemp("specwatch")
    url = f"sqlite:///{tmp / 'specwatch.db'}"
    config = Config(
        storage=StorageConfig(data_dir=tmp / "data", database_url=url),
        metrics=MetricsConfig(port=0),
        engines={"vllm-a": EngineEndpointConfig(url=vllm.url)},
    )
    engine = create_db_engine(url)
    upgrade(engine)
    daemon = Daemon(config, tmp / "config.toml", Systemd({}))
    daemon.metrics, server = start_http(daemon, config.metrics)
    daemon.engine = engine
    try:
        feed(daemon, engine, config, vllm)
        yield server
    finally:
        server.stop()
        daemon.meters.shutdown()
        engine.dispose()


class Prometheus:
    """A real Prometheus on 127.0.0.1, its HTTP API."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log = log

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Json]:
        """An instant query at now; a query Prometheus cannot parse fails the test with its error."""
        try:
            return list(self.get("/api/v1/query", query=expr)["result"])
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode()}") from None

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not ready():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{what}: not within {WAIT_S:.0f}s"
            time.sleep(0.25)


def prometheus_config(target: str, rules_file: Path) -> str:
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_file)],
            "scrape_configs": [{"job_name": "specwatch", "static_configs": [{"targets": [target]}]}],
        }
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def prometheus(specwatch: MetricsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{specwatch.port}", RULES), encoding="utf-8")
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(port, process, log)
    try:
        server.wait_for("Prometheus ready", lambda: answers(f"{server.url}/-/ready"))
        server.wait_for("two scrapes of specwatch", lambda: scrapes(server) >= 2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrapes(server: Prometheus) -> int:
    result = server.query('count_over_time(up{job="specwatch"}[1m])')
    return int(float(result[0]["value"][1])) if result else 0


def dashboard_queries(model: Json) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation."""
    found = [
        (f"panel {item['title']!r}", target["expr"]) for item in all_panels(model) for target in item.get("targets", [])
    ]
    found += [(f"annotation {item['name']!r}", item["expr"]) for item in model["annotations"]["list"] if "expr" in item]
    return found


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
GRAFANA_REGEX_SPECIALS = set("$^*{}[]'+?.()|")


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable's value as Grafana's Prometheus data source puts it in a query: each value
    escaped for the regular expression and the PromQL string, the values alternated."""
    escaped = ["".join(f"\\\\{char}" if char in GRAFANA_REGEX_SPECIALS else char for char in v) for v in values]
    return "(" + "|".join(escaped) + ")"


def substituted(expr: str, values: Mapping[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"a variable left in {expr}"
    return expr


def label_values(server: Prometheus, definition: str, values: Mapping[str, str]) -> list[str]:
    """What Grafana's label_values(selector, label) lists: the label's values on the matching series."""
    match = LABEL_VALUES.match(definition)
    assert match, definition
    selector = substituted(match["selector"], values)
    return sorted(server.get(f"/api/v1/label/{match['label']}/values", **{"match[]": [selector]}))


def variable_values(server: Prometheus, model: Json) -> dict[str, list[str]]:
    """Each template variable's options, resolved in order as Grafana resolves them (later ones read earlier)."""
    resolved: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for variable in model["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "custom":
            resolved[name] = variable["query"].split(",")
        elif variable["type"] == "query":
            resolved[name] = label_values(server, variable["definition"], current)
        else:
            continue
        current[name] = selected(variable, resolved[name])
    return resolved


def selected(variable: Json, options: list[str]) -> str:
    """The variable's value in a query: All of a multi-value variable, else its current value."""
    if variable.get("includeAll"):
        return grafana_regex(options)
    value = variable.get("current", {}).get("value")
    return str(value) if value in options else options[0]


@needs_prometheus
def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    model = dashboard()
    options = variable_values(prometheus, model)
    assert options["job"] == ["specwatch"]
    assert options["window"] == ["1h", "24h", "7d"] and options["source"] == ["shadow", "live"]
    assert {"*", LOW_SEGMENT, HIGH_SEGMENT, "lang=zh", "region=eu"} <= set(options["segment"])
    queries = dashboard_queries(model)
    assert len(queries) >= 30
    empty = []
    for window in options["window"]:
        for source in options["source"]:
            values = {
                "job": grafana_regex(options["job"]),
                "segment": grafana_regex(options["segment"]),
                "window": window,
                "source": source,
                "__rate_interval": RATE_INTERVAL,
            }
            empty += [(f"{where} ({window}, {source})", substituted(expr, values)) for where, expr in queries]
    # every query must parse now; a rate needs two scrapes in its range and the rule alerts their first
    # evaluations, which a loaded machine can delay: ask again until each has returned data once
    deadline = time.monotonic() + WAIT_S
    while True:
        empty = [(where, expr) for where, expr in empty if not prometheus.query(expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert empty == [], "\n".join(f"{where}: {expr}" for where, expr in empty)


@needs_prometheus
def test_prometheus_evaluates_the_rules_on_specwatchs_metrics(prometheus: Prometheus) -> None:
    def active(name: str) -> list[Json]:
        return prometheus.query(f'ALERTS{{alertname="{name}", alertstate="pending"}}')

    prometheus.wait_for(
        "the alerts pending", lambda: bool(active("AcceptanceBelowThreshold") and active("IntakePaused"))
    )
    below = {item["metric"]["segment"] for item in active("AcceptanceBelowThreshold")}
    assert below == {LOW_SEGMENT, "lang=zh"}, "zh alone: en at 11/12, all traffic and region=eu at 3/4"
    confident = prometheus.query("specwatch:alpha_below_threshold:confident")
    assert {item["metric"]["source"] for item in confident} == {"shadow"}, "a replaying instance alerts on shadow"
    assert not active("ReplayDeviceLost") and not active("ReplayStalled")
    groups = prometheus.get("/api/v1/rules")["groups"]
    health = {rule["name"]: (rule["health"], rule.get("lastError", "")) for group in groups for rule in group["rules"]}
    assert len(health) == len(rules())
    assert {name: state for name, state in health.items() if state[0] != "ok"} == {}
