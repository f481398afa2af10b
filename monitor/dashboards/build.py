"""The Grafana dashboard for specwatch, written from code into monitor/dashboards/specwatch.json (committed;
tests/monitor/service/test_prometheus_stack.py checks that the file is this module's output and evaluates
every query on a real Prometheus).

    python -m monitor.dashboards.build            # rewrites specwatch.json
    python -m monitor.dashboards.build --check    # exit 1 when specwatch.json is not what this module writes

Grafana's classic dashboard model at schemaVersion 39. Template variables: datasource, job, window, segment
(multi, repeats the interval panel) and source (shadow: specwatch's replay, live: the serving engine's own
counts). It complements vLLM's own spec-decode dashboard
(examples/observability/dashboards/grafana/vllm_speculative_decoding.json in vLLM), which it links to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DASHBOARD_FILE = HERE / "specwatch.json"
RULES_FILE = HERE.parent / "prometheus" / "specwatch.rules.yml"

SCHEMA_VERSION = 39
UID = "specwatch"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VLLM_DASHBOARD_UID = "vllm-spec-decode"
VLLM_DASHBOARD_SOURCE = (
    "https://github.com/vllm-project/vllm/blob/main/examples/observability/dashboards/grafana/"
    "vllm_speculative_decoding.json"
)
THRESHOLD = 0.65  # drift.threshold's default: the colour steps of the stat panels
WARNING_MARGIN = 0.05  # drift.warning_margin's default
DIVERGENCE_TOLERANCE = 0.05  # drift.divergence_tolerance's default
STALL_AFTER_S = 1800  # replay.stall_after_s's default
FULL_WIDTH = 24
REF_IDS = "ABCDEFGHIJ"

Json = dict[str, Any]


def selector(**labels: str) -> str:
    """`{job=~"$job", key="value", ...}`; a value starting with "~" matches as a regular expression."""
    parts = ['job=~"$job"']
    for key, value in labels.items():
        parts.append(f'{key}=~"{value[1:]}"' if value.startswith("~") else f'{key}="{value}"')
    return "{" + ", ".join(parts) + "}"


SEGMENTS = selector(group="segment", segment="~$segment", window="$window", source="~$source")
ROLLUPS = selector(group="rollup", window="$window", source="~$source")
ALL_TRAFFIC = selector(group="all", window="$window")
ONE_SEGMENT = selector(segment="~$segment", window="$window", source="~$source")
BOTH_SOURCES = selector(segment="~$segment", window="$window")


def alert_names(rules_file: Path = RULES_FILE) -> list[str]:
    """The alerts of monitor/prometheus/specwatch.rules.yml, in file order."""
    groups = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


# ---- queries and field settings ------------------------------------------------------------------------


def query(expr: str, legend: str, *, instant: bool = False, heatmap: bool = False) -> Json:
    target: Json = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": not instant}
    if instant:
        target["instant"] = True
    if heatmap:
        target["format"] = "heatmap"
    return target


def steps(*colors: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in colors]}


ALPHA_STEPS = steps((None, "red"), (THRESHOLD, "orange"), (THRESHOLD + WARNING_MARGIN, "green"))
NEUTRAL_STEPS = steps((None, "blue"))


def field_defaults(unit: str = "none", *, low: float | None = None, high: float | None = None, **more: Any) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"}, "thresholds": NEUTRAL_STEPS, **more}
    if low is not None:
        defaults["min"] = low
    if high is not None:
        defaults["max"] = high
    return defaults


def override(matcher: str, match: str, properties: Json) -> Json:
    """Field settings for the series a matcher picks: byName (the series shown as `match`) or byRegexp."""
    return {
        "matcher": {"id": matcher, "options": match},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


DASHED = {"dash": [10, 10], "fill": "dash"}
THRESHOLD_LINE = {"custom.lineStyle": DASHED, "color": {"fixedColor": "red", "mode": "fixed"}, "custom.fillOpacity": 0}


# ---- panels --------------------------------------------------------------------------------------------


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    defaults: Json,
    *,
    options: Json | None = None,
    overrides: list[Json] | None = None,
    **extra: Any,
) -> Json:
    """A panel of `kind` on the dashboard's data source; `extra` adds keys such as repeat."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "none",
    *,
    low: float | None = None,
    high: float | None = None,
    lines: tuple[float, ...] = (),
    line_color: str = "red",
    overrides: list[Json] | None = None,
    **extra: Any,
) -> Json:
    """A time series panel; `lines` are drawn dashed across it (Grafana's thresholds style)."""
    custom: Json = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 0, "showPoints": "never", "spanNulls": True}
    defaults = field_defaults(unit, low=low, high=high, custom=custom)
    if lines:
        custom["thresholdsStyle"] = {"mode": "dashed"}
        defaults["thresholds"] = steps((None, "transparent"), *((value, line_color) for value in lines))
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, description, targets, defaults, options=options, overrides=overrides, **extra)


def stat(
    title: str,
    description: str,
    targets: list[Json],
    defaults: Json,
    *,
    text_mode: str = "value",
    colored: bool = False,
) -> Json:
    """A stat panel; `colored`: its background takes the threshold steps' colour."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background" if colored else "none",
        "graphMode": "none",
        "textMode": text_mode,
        "justifyMode": "auto",
        "orientation": "auto",
    }
    return panel("stat", title, description, targets, defaults, options=options)


def state_timeline(title: str, description: str, targets: list[Json], mappings: list[Json]) -> Json:
    defaults = field_defaults(mappings=mappings, color={"mode": "thresholds"}, thresholds=steps((None, "green")))
    options = {
        "mergeValues": True,
        "showValue": "auto",
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel("state-timeline", title, description, targets, defaults, options=options)


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def text(title: str, content: str) -> Json:
    return {"type": "text", "title": title, "options": {"mode": "markdown", "content": content}}


# ---- the dashboard's panels, top to bottom ------------------------------------------------------------


def overview() -> list[tuple[Json, int, int]]:
    """(panel, width, height) of the first rows."""
    alpha_all = stat(
        "alpha, all traffic ($window)",
        "Acceptance rate A / (A + R) of the live draft over all traffic: shadow is specwatch's replay, live the "
        "serving engine's own per-request counts. Red below drift.threshold (0.65), orange within 0.05 of it.",
        [query(f"specwatch_alpha{ALL_TRAFFIC}", "{{source}}")],
        field_defaults("percentunit", low=0, high=1, thresholds=ALPHA_STEPS, decimals=3),
        colored=True,
    )
    tau_all = stat(
        "tau, all traffic ($window)",
        "Tokens emitted per verify step (one target forward), shadow and live.",
        [query(f"specwatch_tau{ALL_TRAFFIC}", "{{source}}")],
        field_defaults("none", decimals=2),
    )
    draft = stat(
        "live draft",
        "The live (draft_version, target_version) pair, from specwatch_live_draft_info; a change is annotated on "
        "every graph.",
        [query(f"specwatch_live_draft_info{selector()}", "{{draft_version}}", instant=True)],
        field_defaults("none"),
        text_mode="name",
    )
    firing = stat(
        "specwatch alerts firing",
        "Alerts specwatch itself raised and has not resolved (muted ones included): specwatch alerts list.",
        [query(f"sum(specwatch_alerts_firing{selector()})", "firing")],
        field_defaults("none", thresholds=steps((None, "green"), (1, "red"))),
        colored=True,
    )
    return [(alpha_all, 6, 4), (tau_all, 6, 4), (draft, 6, 4), (firing, 6, 4)]


def threshold_query(group_selector: str) -> Json:
    return query(f"max by (job, instance) (specwatch_alpha_threshold{group_selector})", "threshold ({{instance}})")


def acceptance() -> list[tuple[Json, int, int]]:
    threshold_overrides = [override("byRegexp", "threshold.*", THRESHOLD_LINE)]
    rollups = timeseries(
        "alpha by roll-up ($window, $source)",
        "Each roll-up pools the segments that share a label value (lang=zh is all Chinese traffic). The dashed "
        "line is the threshold of all traffic (drift.threshold); specwatch_alpha_threshold has each group's own.",
        [query(f"specwatch_alpha{ROLLUPS}", "{{segment}}"), threshold_query(ALL_TRAFFIC)],
        "percentunit",
        low=0,
        high=1,
        overrides=threshold_overrides,
    )
    segments = timeseries(
        "alpha by segment ($window, $source)",
        "Full segments (every configured label plus the language) selected in $segment.",
        [query(f"specwatch_alpha{SEGMENTS}", "{{segment}}"), threshold_query(ALL_TRAFFIC)],
        "percentunit",
        low=0,
        high=1,
        overrides=threshold_overrides,
    )
    band = timeseries(
        "alpha of $segment with its interval ($window, $source)",
        "alpha, the bootstrap confidence interval around it (stats.confidence) and the segment's threshold. "
        "specwatch alerts when alpha and the interval's upper bound are both below the threshold "
        "(AcceptanceBelowThreshold).",
        [
            query(f"specwatch_alpha{ONE_SEGMENT}", "alpha"),
            query(f"specwatch_alpha_interval_low{ONE_SEGMENT}", "interval low"),
            query(f"specwatch_alpha_interval_high{ONE_SEGMENT}", "interval high"),
            query(f"specwatch_alpha_threshold{ONE_SEGMENT}", "threshold"),
        ],
        "percentunit",
        low=0,
        high=1,
        overrides=[
            override("byName", "interval high", {"custom.fillBelowTo": "interval low", "custom.lineWidth": 0}),
            override("byName", "interval low", {"custom.lineWidth": 0}),
            override(
                "byRegexp", "interval.*", {"custom.fillOpacity": 20, "color": {"fixedColor": "blue", "mode": "fixed"}}
            ),
            override("byName", "threshold", THRESHOLD_LINE),
        ],
        repeat="segment",
        repeatDirection="h",
        maxPerRow=3,
    )
    tau = timeseries(
        "tau by segment ($window, $source)",
        "Mean tokens emitted per verify step, (A + S - E) / S.",
        [query(f"specwatch_tau{SEGMENTS}", "{{segment}}")],
        "none",
    )
    draft_rate = timeseries(
        "draft acceptance rate A / D by segment ($window)",
        "Accepted / drafted tokens (vLLM's spec_decode acceptance rate): below alpha when k > 1. Shadow and live.",
        [query(f"specwatch_draft_acceptance_rate{BOTH_SOURCES}", "{{segment}} {{source}}")],
        "percentunit",
        low=0,
        high=1,
    )
    positions = panel(
        "bargauge",
        "per-position acceptance p_i ($window, $source)",
        "Share of verify steps whose i-th drafted token was accepted; it falls with the position.",
        [
            query(
                f"specwatch_per_position_acceptance{ONE_SEGMENT}",
                "{{segment}} p{{position}}",
                instant=True,
            )
        ],
        field_defaults("percentunit", low=0, high=1, color={"mode": "continuous-GrYlRd"}),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
        },
    )
    return [(rollups, 12, 8), (segments, 12, 8), (band, 8, 8), (tau, 8, 8), (draft_rate, 8, 8), (positions, 8, 8)]


def live_and_shadow() -> list[tuple[Json, int, int]]:
    both = timeseries(
        "alpha, live (engine) and shadow (replay) ($window)",
        "The engine's own per-request acceptance next to specwatch's replay of the registry's live head. A live "
        "alpha read from an engine histogram rests on an estimated R and reads low.",
        [query(f"specwatch_alpha{BOTH_SOURCES}", "{{segment}} {{source}}")],
        "percentunit",
        low=0,
        high=1,
    )
    live_minus_shadow = timeseries(
        "live minus shadow alpha ($window)",
        "Per group, the engine's alpha minus the replay's. ShadowLiveDivergence fires when the paired interval "
        "of this difference lies beyond drift.divergence_tolerance (dashed: ±0.05) from zero.",
        [
            query(
                f"specwatch_alpha{selector(segment='~$segment', window='$window', source='live')} - ignoring (source) "
                f"specwatch_alpha{selector(segment='~$segment', window='$window', source='shadow')}",
                "{{segment}}",
            )
        ],
        "percentunit",
        lines=(-DIVERGENCE_TOLERANCE, DIVERGENCE_TOLERANCE),
        line_color="orange",
    )
    paired = timeseries(
        "paired samples ($window)",
        "Samples with both the engine's counts and a replay: what live minus shadow is measured on.",
        [
            query(
                f"specwatch_paired_samples{selector(segment='~$segment', window='$window', source='shadow')}",
                "{{segment}}",
            )
        ],
        "none",
        low=0,
    )
    engine_rates = timeseries(
        "engine counters: A / D and alpha estimate ($window)",
        "From the engines' own spec-decode counters ([engines.NAME] scrapes): A / D exact, alpha with R "
        "estimated as S - per_pos[k-1], at most the true alpha. vLLM's own dashboard shows these counters live.",
        [
            query(
                f"specwatch_engine_draft_acceptance_rate{selector(window='$window')}", "{{endpoint}} {{model_name}} A/D"
            ),
            query(f"specwatch_engine_alpha_estimate{selector(window='$window')}", "{{endpoint}} {{model_name}} alpha"),
        ],
        "percentunit",
        low=0,
        high=1,
    )
    engine_tau = timeseries(
        "engine mean acceptance length ($window)",
        "1 + A / S from the engines' counters (vLLM's mean acceptance length).",
        [query(f"specwatch_engine_mean_acceptance_length{selector(window='$window')}", "{{endpoint}} {{model_name}}")],
        "none",
    )
    return [(both, 12, 8), (live_minus_shadow, 12, 8), (paired, 8, 8), (engine_rates, 8, 8), (engine_tau, 8, 8)]


def replay() -> list[tuple[Json, int, int]]:
    lag = timeseries(
        "replay lag",
        "How long the oldest sample without a replay has waited. ReplayStalled fires above replay.stall_after_s "
        "(dashed: 30 min).",
        [query(f"specwatch_replay_lag_seconds{selector()}", "{{instance}}")],
        "s",
        low=0,
        lines=(STALL_AFTER_S,),
    )
    backlog = timeseries(
        "replay backlog",
        "Samples without a scored result for the live versions.",
        [query(f"specwatch_replay_pending_samples{selector()}", "{{instance}}")],
        "none",
        low=0,
    )
    throughput = timeseries(
        "replay throughput",
        "Target tokens scored per second in the last round, and results stored per second by mode.",
        [
            query(f"specwatch_replay_tokens_per_second{selector()}", "tokens/s {{instance}}"),
            query(
                f"sum by (mode) (rate(specwatch_samples_replayed_total{selector()}[$__rate_interval]))",
                "results/s {{mode}}",
            ),
        ],
        "none",
        low=0,
    )
    accepted = panel(
        "heatmap",
        "accepted tokens per verify step (replay)",
        "How many drafted tokens each verify step accepted, over scored replays.",
        [
            query(
                f"sum by (le) (increase(specwatch_accepted_length_bucket{selector()}[$__rate_interval]))",
                "{{le}}",
                heatmap=True,
            )
        ],
        {"unit": "none", "custom": {"scaleDistribution": {"type": "linear"}}},
        options={
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": "none"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Blues", "steps": 64, "fill": "dark-blue", "scale": "exponential"},
            "rowsFrame": {"layout": "auto"},
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": False},
        },
    )
    return [(lag, 6, 8), (backlog, 6, 8), (throughput, 6, 8), (accepted, 6, 8)]


def intake() -> list[tuple[Json, int, int]]:
    stored = timeseries(
        "samples stored per second",
        "Samples intake stored, by source (file or HTTP).",
        [
            query(
                f"sum by (source) (rate(specwatch_samples_ingested_total{selector()}[$__rate_interval]))", "{{source}}"
            )
        ],
        "none",
        low=0,
    )
    quarantined = timeseries(
        "records quarantined per second",
        "Records intake could not use: specwatch intake errors lists them.",
        [
            query(
                f"sum by (source) (rate(specwatch_samples_quarantined_total{selector()}[$__rate_interval]))",
                "{{source}}",
            )
        ],
        "none",
        low=0,
    )
    engine_reports = timeseries(
        "engine acceptance reports per second",
        "Requests whose engine-reported acceptance intake stored, or refused.",
        [
            query(
                f"sum by (outcome) (rate(specwatch_engine_reports_ingested_total{selector()}[$__rate_interval]))",
                "{{outcome}}",
            )
        ],
        "none",
        low=0,
    )
    last_hour = stat(
        "quarantined in the last hour",
        "IntakeErrorsHigh fires above intake.quarantined_per_hour_alert (100).",
        [query(f"sum(increase(specwatch_samples_quarantined_total{selector()}[1h]))", "quarantined")],
        field_defaults("none", decimals=0, thresholds=steps((None, "green"), (100, "red"))),
        colored=True,
    )
    return [(stored, 8, 8), (quarantined, 6, 8), (engine_reports, 6, 8), (last_hour, 4, 8)]


ALERT_MAPPINGS = [
    {"type": "value", "options": {"0": {"text": "ok", "color": "green", "index": 0}}},
    {"type": "range", "options": {"from": 1, "to": 1e9, "result": {"text": "firing", "color": "red", "index": 1}}},
]
CONDITION_MAPPINGS = [
    {"type": "value", "options": {"0": {"text": "no", "color": "green", "index": 0}}},
    {"type": "value", "options": {"1": {"text": "yes", "color": "red", "index": 1}}},
]


def alerts() -> list[tuple[Json, int, int]]:
    own = state_timeline(
        "specwatch's own alerts",
        "Firing alerts per rule as the daemon raises them (config.toml [alerts.rules]).",
        [query(f"specwatch_alerts_firing{selector()}", "{{alertname}}")],
        ALERT_MAPPINGS,
    )
    names = "|".join(alert_names())
    prometheus = state_timeline(
        "Prometheus rule alerts (specwatch.rules.yml)",
        "Pending and firing alerts of monitor/prometheus/specwatch.rules.yml, when Prometheus evaluates them.",
        [query(f"ALERTS{selector(alertname='~' + names)}", "{{alertname}} {{segment}} {{alertstate}}")],
        [
            {"type": "value", "options": {"1": {"text": "active", "color": "red", "index": 0}}},
        ],
    )
    conditions = state_timeline(
        "intake paused / GPU lost",
        "What only the daemon knows: a full disk pauses intake (IntakePaused), the configured GPU is gone "
        "(ReplayDeviceLost).",
        [
            query(f"specwatch_intake_paused{selector()}", "intake paused {{instance}}"),
            query(f"specwatch_device_lost{selector()}", "GPU lost {{instance}}"),
        ],
        CONDITION_MAPPINGS,
    )
    return [(own, 10, 8), (prometheus, 8, 8), (conditions, 6, 8)]


ABOUT = f"""specwatch replays sampled production traffic through the live draft head and measures acceptance
per segment, next to what the serving engine reports for the same requests. For the engine's own live
counters (acceptance rate, acceptance length, per-position acceptance, token flow) use vLLM's dashboard:
[vLLM / Speculative Decoding](/d/{VLLM_DASHBOARD_UID}) ([source]({VLLM_DASHBOARD_SOURCE})).
Alert rules for Prometheus: monitor/prometheus/specwatch.rules.yml."""


def sections() -> list[tuple[str | None, list[tuple[Json, int, int]]]]:
    return [
        (None, overview()),
        ("Acceptance", acceptance()),
        ("Live (engine) and shadow (replay)", live_and_shadow()),
        ("Replay", replay()),
        ("Intake", intake()),
        ("Alerts", alerts()),
        ("About", [(text("specwatch and vLLM", ABOUT), FULL_WIDTH, 4)]),
    ]


def laid_out(parts: list[tuple[str | None, list[tuple[Json, int, int]]]]) -> list[Json]:
    """Panels with ids and grid positions: rows of 24 units, a row panel before each titled section."""
    panels: list[Json] = []
    y = 0
    for title, items in parts:
        if title is not None:
            panels.append({**row(title), "gridPos": {"h": 1, "w": FULL_WIDTH, "x": 0, "y": y}})
            y += 1
        x, line_height = 0, 0
        for item, width, height in items:
            if x + width > FULL_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**item, "gridPos": {"h": height, "w": width, "x": x, "y": y}})
            x, line_height = x + width, max(line_height, height)
        y += line_height
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        for letter, target in zip(REF_IDS, item.get("targets", []), strict=False):
            target["refId"] = letter
    return panels


# ---- variables, annotations, links ------------------------------------------------------------------------


def query_variable(name: str, label: str, definition: str, *, multi: bool, include_all: bool) -> Json:
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {}
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": current,
        "options": [],
        "hide": 0,
    }


def variables() -> list[Json]:
    datasource = {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "options": [],
        "refresh": 1,
        "regex": "",
        "hide": 0,
    }
    source = {
        "type": "custom",
        "name": "source",
        "label": "Source",
        "description": "shadow: specwatch's replay of the live head; live: the serving engine's own counts",
        "query": "shadow,live",
        "current": {"selected": True, "text": "shadow", "value": "shadow"},
        "options": [
            {"selected": True, "text": "shadow", "value": "shadow"},
            {"selected": False, "text": "live", "value": "live"},
        ],
        "multi": False,
        "includeAll": False,
        "hide": 0,
    }
    window = query_variable(
        "window", "Window", 'label_values(specwatch_alpha{job=~"$job"}, window)', multi=False, include_all=False
    )
    window["current"] = {"selected": True, "text": "24h", "value": "24h"}
    return [
        datasource,
        query_variable("job", "Job", "label_values(specwatch_alerts_firing, job)", multi=True, include_all=True),
        window,
        query_variable(
            "segment",
            "Segment",
            'label_values(specwatch_alpha{job=~"$job", window="$window"}, segment)',
            multi=True,
            include_all=True,
        ),
        source,
    ]


def annotation_queries() -> list[Json]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    info = f"specwatch_live_draft_info{selector()}"
    live_draft = {
        "name": "live draft",
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": "purple",
        "expr": f"{info} unless {info} offset 1m",
        "step": "1m",
        "titleFormat": "draft {{draft_version}}",
        "textFormat": "live draft {{draft_version}} on target {{target_version}} ({{instance}})",
        "tagKeys": "instance",
        "useValueForTime": False,
    }
    return [builtin, live_draft]


def link(title: str, url: str, tooltip: str) -> Json:
    return {
        "title": title,
        "type": "link",
        "url": url,
        "tooltip": tooltip,
        "icon": "external link",
        "tags": [],
        "asDropdown": False,
        "targetBlank": True,
        "includeVars": False,
        "keepTime": True,
    }


def links() -> list[Json]:
    vllm_dashboards = {
        **link("vLLM dashboards", "", "vLLM's own dashboards in this Grafana (tag vllm)"),
        "type": "dashboards",
        "tags": ["vllm"],
        "asDropdown": True,
        "targetBlank": False,
    }
    return [
        link(
            "vLLM / Speculative Decoding",
            f"/d/{VLLM_DASHBOARD_UID}",
            "the engine's live spec-decode counters (import it from vLLM's examples/observability)",
        ),
        link("vLLM's dashboard source", VLLM_DASHBOARD_SOURCE, "vllm_speculative_decoding.json in vLLM"),
        vllm_dashboards,
    ]


def dashboard() -> Json:
    return {
        "uid": UID,
        "title": "specwatch: speculative decoding acceptance",
        "description": "Acceptance of the live draft head per segment (replay and engine), replay, intake, alerts.",
        "tags": ["specwatch", "speculative-decoding", "vllm"],
        "schemaVersion": SCHEMA_VERSION,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "id": None,
        "annotations": {"list": annotation_queries()},
        "links": links(),
        "templating": {"list": variables()},
        "panels": laid_out(sections()),
    }


def rendered() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when specwatch.json differs from the output")
    args = parser.parse_args(argv)
    text_now = rendered()
    if args.check:
        if not DASHBOARD_FILE.exists() or DASHBOARD_FILE.read_text(encoding="utf-8") != text_now:
            parser.exit(1, f"{DASHBOARD_FILE} is out of date: python -m monitor.dashboards.build\n")
        return 0
    DASHBOARD_FILE.write_text(text_now, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
