"""The operator's configuration: config.toml loaded into pydantic models with bounds.

Secrets never live in the file: every secret is named by an environment variable
(`*_env`) or a file (`*_file`) and read only when needed, through `Secret`.

    python -c "from monitor.base.config import load_config; print(load_config('config.toml'))"
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from monitor.base.languages import DEFAULT_LANGUAGES, check_languages

DEFAULT_CONFIG_PATH = Path("config.toml")
CONFIG_ENV = "SPECWATCH_CONFIG"


class ConfigError(Exception):
    """The config file cannot be used; `problems` lists each one as 'key.path: message'."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(Section):
    """Where a secret comes from: an environment variable or a file, never the config itself."""

    env: str | None = Field(default=None, description="environment variable holding the secret")
    file: Path | None = Field(default=None, description="file holding the secret (first line, stripped)")

    @model_validator(mode="before")
    @classmethod
    def _never_inline(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError('secrets are never inline: use { env = "VAR" } or { file = "/path" }')
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if self.env and self.file:
            raise ValueError("give env or file, not both")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.env or self.file)

    def read(self) -> Secret | None:
        """The secret's value, or None when it is not configured or not set."""
        if self.env:
            value = os.environ.get(self.env)
            return Secret(value) if value else None
        if self.file:
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SecretUnavailable(f"cannot read secret file {self.file}: {exc.strerror}") from None
            return Secret(value) if value else None
        return None

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        if self.file:
            return f"file {self.file}"
        return "not configured"


class SecretUnavailable(Exception):
    """A configured secret could not be read."""


class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class StorageConfig(Section):
    data_dir: Path = Field(
        default=Path("specwatch-data"),
        description="directory for the SQLite database, models, reports and heads; relative to the config file. "
        "Created mode 0700; files specwatch creates are 0600",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means sqlite:///<data_dir>/specwatch.db. Never put a password here "
        "(neither user:password@ nor ?password=)",
    )
    database_password: SecretSource = Field(
        default_factory=SecretSource, description="password for database_url, from env or file"
    )
    connect_timeout_s: float = Field(
        default=10.0, ge=1, le=300, description="PostgreSQL: give up on a connection attempt after this long"
    )
    statement_timeout_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="PostgreSQL: the server cancels a statement running longer than this (statement_timeout); "
        "migrations run without it; 0 = the server's setting",
    )
    idle_in_transaction_timeout_s: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="PostgreSQL: the server ends a session left idle inside a transaction this long (a client "
        "that vanished mid-transaction), freeing its locks (idle_in_transaction_session_timeout); 0 = the server's",
    )
    answer_timeout_s: float = Field(
        default=330.0,
        ge=0,
        le=86400,
        description="PostgreSQL: a call the server has not answered for this long fails and its connection is "
        "closed (a silent peer: a hung proxy or pooler, a stopped server); above statement_timeout_s; "
        "migrations wait without it; 0 = wait forever",
    )
    ping_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="PostgreSQL: a pooled connection is checked before use and replaced when it does not answer "
        "within this long",
    )
    tcp_keepalive_idle_s: int = Field(
        default=30, ge=1, le=7200, description="PostgreSQL: TCP keepalive probes start after this long without traffic"
    )
    tcp_keepalive_interval_s: int = Field(
        default=10, ge=1, le=600, description="PostgreSQL: seconds between unanswered TCP keepalive probes"
    )
    tcp_keepalive_count: int = Field(
        default=3, ge=1, le=100, description="PostgreSQL: unanswered keepalive probes before the connection is dead"
    )
    tcp_user_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="PostgreSQL: sent data unacknowledged for this long closes the connection (tcp_user_timeout); "
        "0 = the OS default (many minutes)",
    )

    @field_validator("database_url")
    @classmethod
    def _no_password_in_url(cls, url: str) -> str:
        problem = url_password_problem(url)
        if problem:
            raise ValueError(f"{problem}; use storage.database_password.env/file")
        return url

    @model_validator(mode="after")
    def _answer_after_statement_timeout(self) -> StorageConfig:
        if self.answer_timeout_s and self.statement_timeout_s and self.answer_timeout_s <= self.statement_timeout_s:
            raise ValueError(
                "answer_timeout_s must exceed statement_timeout_s (the server answers a statement it cancels)"
            )
        return self


PASSWORD_KEYS = ("password", "passwd", "pwd")
MASK = "***"


def url_password_problem(url: str) -> str | None:
    """Why `url` cannot be used because it holds a password (in user:password@ or in a query parameter such as
    ?password= in any case), or None. Never quotes the URL."""
    if not url:
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "database_url is not a valid SQLAlchemy URL (dialect+driver://user@host:port/database)"
    if parsed.password:
        return "database_url must not contain a password"
    if any(any(word in key.lower() for word in PASSWORD_KEYS) for key in parsed.query):
        return "database_url must not carry a password in its query"
    return None


def shown_url(url: str | URL) -> str:
    """A database URL as it may be printed or logged: no password, every query value masked."""
    parsed = make_url(url)
    masked = parsed.set(query={key: MASK for key in parsed.query})
    return masked.render_as_string(hide_password=True).replace(quote(MASK, safe=""), MASK)


SegmentKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class SamplingRule(Section):
    """Sampling for segments whose string contains every `match` part (e.g. 'region=sg')."""

    match: list[str] = Field(min_length=1, description="segment parts that must all be present, e.g. ['lang=zh']")
    rate: float = Field(ge=0.0, le=1.0, description="fraction of matching traffic kept")
    hourly_cap: int = Field(default=0, ge=0, description="most samples kept per segment per hour; 0 = no cap")


class SamplingConfig(Section):
    rate: float = Field(default=1.0, ge=0.0, le=1.0, description="fraction of traffic kept, per segment")
    hourly_cap: int = Field(default=0, ge=0, description="most samples kept per segment per hour; 0 = no cap")
    rules: list[SamplingRule] = Field(
        default_factory=list,
        description='per-segment overrides, first match wins: [{ match = ["lang=zh"], rate = 1.0, hourly_cap = 500 }]',
    )

    def rule_for(self, segment: str) -> tuple[float, int]:
        parts = set(segment.split("/"))
        for rule in self.rules:
            if parts.issuperset(rule.match):
                return rule.rate, rule.hourly_cap
        return self.rate, self.hourly_cap


class RedactionConfig(Section):
    extra_patterns: dict[str, str] = Field(
        default_factory=dict, description="placeholder name -> regex; matches become <NAME>"
    )
    hashed_keys: list[SegmentKey] = Field(
        default_factory=lambda: ["tenant", "user"],
        description="metadata keys whose values are stored only as salted hashes",
    )
    hash_salt: SecretSource = Field(
        default_factory=lambda: SecretSource(env="SPECWATCH_HASH_SALT"),
        description="salt for hashed metadata values, from env or file",
    )

    @field_validator("extra_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(f"pattern name {name!r} must be UPPER_SNAKE_CASE")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name}: {exc}") from None
        return patterns


class FollowConfig(Section):
    paths: list[Path] = Field(default_factory=list, description="log files or directories followed like tail -F")
    glob: str = Field(default="*.jsonl*", description="file name pattern inside followed directories")
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, description="seconds between checks for new lines")
    batch_lines: int = Field(default=1000, ge=1, le=100_000, description="lines committed per transaction")


class HttpIntakeConfig(Section):
    enabled: bool = Field(default=True, description="serve POST /v1/samples")
    host: str = Field(default="127.0.0.1", description="bind address; anything but loopback requires a token")
    port: int = Field(default=8787, ge=0, le=65535, description="TCP port (0 picks a free one)")
    token: SecretSource = Field(
        default_factory=lambda: SecretSource(env="SPECWATCH_INGEST_TOKEN"),
        description="bearer token required from clients; mandatory when host is not loopback",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="largest request body accepted")
    request_timeout_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="a client must send a whole request, headers and body, within this many seconds of "
        "connecting (or of the previous reply); a slower one gets 408 and its connection is closed",
    )
    max_concurrent_requests: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="POST requests received or stored at once; more get 429 with Retry-After "
        "(each body waits in a temporary file, not in memory)",
    )
    max_records_per_request: int = Field(
        default=200_000,
        ge=1,
        le=10_000_000,
        description="records (array items or lines) in one request; a request with more gets 413 with the "
        "limit and stores nothing",
    )
    records_per_commit: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="a request's records are stored in transactions of this many; after a failure the "
        "stored ones come back as duplicates when the client retries",
    )
    ingest_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="requests whose records are stored at the same time (worker threads); the others wait",
    )

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class IntakeConfig(Section):
    format: Literal["auto", "specwatch", "openai"] = Field(
        default="auto", description="record format; auto detects it per line"
    )
    max_record_bytes: int = Field(default=1_000_000, ge=256, description="records larger than this are quarantined")
    segment_keys: list[SegmentKey] = Field(
        default_factory=lambda: ["tenant", "region", "route"],
        description="metadata keys that form the segment, in order; the language is always appended",
    )
    languages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LANGUAGES),
        description="ISO 639-1 codes lingua chooses among for prose the script router cannot place (Latin "
        "script, Thai, Arabic, other scripts); they label segments (lang=vi). Code, Han, Kana, Hangul and "
        "Cyrillic text is the router's (code, zh, zh-en, ja, ko, ru). Must list en; each language adds about "
        "19 MB of models to the daemon, loaded with the first such record; [] = the router alone (en by "
        "stopwords, the rest other)",
    )
    language_min_confidence: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="prose whose most likely language has a lower confidence (relative among intake.languages) "
        "is labelled other: too short, numbers, or a language not listed",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    follow: FollowConfig = Field(default_factory=FollowConfig)
    quarantined_per_hour_alert: int = Field(
        default=100, ge=1, description="IntakeErrorsHigh fires when more records than this were quarantined in an hour"
    )
    http: HttpIntakeConfig = Field(default_factory=HttpIntakeConfig)
    live_counts: Literal["all", "sampled"] = Field(
        default="all",
        description="the engine's own per-request acceptance (a few numbers, no text) is stored for all records "
        "that carry it, or only for those sampled for replay",
    )

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, codes: list[str]) -> list[str]:
        return check_languages(codes)


class RetentionConfig(Section):
    samples_days: int = Field(
        default=30, ge=1, description="samples and engine counter scrapes older than this many days are purged"
    )
    quarantine_days: int = Field(default=14, ge=1, description="quarantined records older than this are purged")
    interval_s: float = Field(default=3600.0, gt=0, description="daemon: seconds between retention purges")


MTP_DRAFT = "mtp"


class ModelsConfig(Section):
    target: Path | None = Field(default=None, description="target model directory (Hugging Face layout)")
    draft: Path | None = Field(
        default=None,
        description='live draft head directory (specwatch, speculators, SGLang, vLLM MEDUSA, causal LM); "mtp" = '
        "the MTP layers models.target carries",
    )
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto picks cuda if present")
    on_device_lost: Literal["cpu", "pause"] = Field(
        default="cpu",
        description="the GPU is gone (absent at start or failing mid-replay): cpu = replay on the CPU, slower; "
        "pause = stop replaying until it is back. Either way the ReplayDeviceLost alert fires",
    )

    @model_validator(mode="before")
    @classmethod
    def _mtp_is_the_targets(cls, data: Any) -> Any:
        """draft = "mtp": the draft is read from the target's directory (its MTP layers)."""
        if isinstance(data, dict) and str(data.get("draft")) == MTP_DRAFT:
            if data.get("target") is None:
                raise ValueError('models.draft = "mtp" reads the MTP layers of models.target: set models.target')
            return {**data, "draft": data["target"]}
        return data


class ReplayConfig(Section):
    enabled: bool = Field(
        default=True,
        description="replay sampled traffic through models.target + models.draft (shadow acceptance); false, or "
        "no models configured, runs on the engines' own acceptance alone (GPU-free mode)",
    )
    window: int = Field(default=4, ge=1, le=16, description="draft window k: tokens proposed per verify step")
    samples_per_round: int = Field(default=64, ge=1, le=100_000, description="samples a worker claims per round")
    batch_size: int = Field(
        default=16, ge=1, le=4096, description="rows per scored forward pass (short samples share a row when packed)"
    )
    max_batch_tokens: int = Field(default=16_384, ge=64, description="positions per scored forward pass, at most")
    pack_samples: bool = Field(
        default=True,
        description="pack short samples into shared rows, each attending only to itself; false for a recurrent or "
        "hybrid target (its state runs along the row)",
    )
    exact_fraction: float = Field(
        default=0.02, ge=0.0, le=1.0, description="share of samples also replayed in exact mode (chosen by sample hash)"
    )
    exact_max_new_tokens: int = Field(default=64, ge=1, le=4096, description="tokens generated per exact replay")
    claim_ttl_s: float = Field(
        default=900.0, gt=0, description="seconds before a dead worker's claimed samples go back to the pool"
    )
    interval_s: float = Field(default=30.0, gt=0, description="seconds between replay rounds when nothing is pending")
    evaluate_interval_s: float = Field(
        default=300.0, gt=0, description="seconds between evaluations (statistics and drift) in the replay loop"
    )
    stall_after_s: float = Field(
        default=1800.0, gt=0, description="ReplayStalled fires when a sample has waited this long for replay"
    )


WindowName = Annotated[str, Field(pattern=r"^[1-9][0-9]*[mhd]$")]
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PATTERN = r"^[0-9]+[smhd]$"
DurationName = Annotated[str, Field(pattern=DURATION_PATTERN)]


def window_length(name: str) -> timedelta:
    """'90m', '1h', '7d' -> timedelta."""
    return timedelta(seconds=int(name[:-1]) * WINDOW_UNITS[name[-1]])


class StatsConfig(Section):
    windows: list[WindowName] = Field(
        default_factory=lambda: ["1h", "24h", "7d"], min_length=1, description="sliding windows, e.g. 90m, 1h, 7d"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    resamples: int = Field(default=1000, ge=100, le=100_000, description="bootstrap resamples (over samples)")
    cost_ratio: float | None = Field(
        default=None, ge=0.0, description="draft/target forward cost for the speedup estimate; unset = measured"
    )
    rollups: list[list[SegmentKey]] = Field(
        default_factory=list,
        description='label sets pooled across segments besides each label alone, e.g. [["region", "lang"]]',
    )


class DriftConfig(Section):
    threshold: float = Field(default=0.65, gt=0.0, lt=1.0, description="alpha below this (with confidence) breaches")
    threshold_overrides: dict[str, float] = Field(
        default_factory=dict, description='per-segment thresholds by segment parts, e.g. { "lang=code" = 0.7 }'
    )
    warning_margin: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="alpha within this of the threshold shows as warning in status"
    )
    min_samples: int = Field(default=30, ge=1, description="samples a segment needs before anything fires")
    false_discovery_rate: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="threshold and change findings of one evaluation: Benjamini-Hochberg at this rate over all tests",
    )
    change_window: WindowName = Field(default="7d", description="recent span the change detector watches")
    change_delta: float = Field(default=0.05, ge=0.0, le=1.0, description="Page-Hinkley tolerance: drops smaller pass")
    change_threshold: float = Field(default=5.0, gt=0.0, description="Page-Hinkley alarm level (lambda)")
    input_window: WindowName = Field(default="24h", description="recent samples compared against the reference")
    input_drift_share: float = Field(
        default=0.5, gt=0.0, le=1.0, description="share of drifted features that makes an input-drift finding"
    )
    input_min_rows: int = Field(default=30, ge=5, description="rows each side needs for an input-drift report")
    input_max_rows: int = Field(
        default=5000, ge=10, description="newest rows of the input window compared (bounds the check's memory)"
    )
    input_interval: DurationName = Field(
        default="1h", description="input drift (an evidently report, seconds of CPU) runs at most this often"
    )
    keep_input_reports: int = Field(default=48, ge=1, description="newest input-drift HTML reports kept on disk")
    reference_corpus: Path | None = Field(
        default=None, description="JSONL of the live head's training corpus; unset = samples before input_window"
    )
    divergence_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="ShadowLiveDivergence fires when the paired interval of live minus shadow alpha lies wholly "
        "beyond this distance from zero",
    )
    divergence_min_pairs: int = Field(
        default=30, ge=2, description="samples with both the engine's and the replay's counts a segment needs"
    )

    def threshold_for(self, segment: str) -> tuple[float, str]:
        """The threshold that applies to `segment` and where it came from ("default" or the override key);
        the one threshold policy: alerting, status, the report, the retrain corpus and the gate read it here.

        An override key such as "lang=zh" or "region=sg/lang=zh" matches a segment when every "/"-separated
        part of the key is one of the segment's parts. The most specific match (most parts) wins; on a tie
        the higher threshold wins, so a tie can never hide an alert.
        """
        parts = set(segment.split("/"))
        matches = [
            (len(key.split("/")), value, key)
            for key, value in self.threshold_overrides.items()
            if all(part in parts for part in key.split("/"))
        ]
        if not matches:
            return self.threshold, "default"
        _, value, key = max(matches)
        return value, key


ALERT_RULES_DEFAULT: dict[str, tuple[str, str, str]] = {
    # alertname: (detector whose findings raise it, severity, what it means)
    "AcceptanceBelowThreshold": ("threshold", "critical", "a segment's alpha is confidently below its threshold"),
    "AcceptanceDropped": ("change", "warning", "a segment's alpha dropped from its baseline"),
    "InputDrift": ("input_drift", "warning", "traffic no longer looks like the live head's training corpus"),
    "ReplayStalled": ("replay_stalled", "warning", "sampled traffic waits for replay longer than allowed"),
    "IntakeErrorsHigh": ("intake_errors", "warning", "many incoming records were quarantined in the last hour"),
    "RetrainFailed": ("retrain_failed", "warning", "the latest retrain job failed"),
    "DeployRolledBack": ("deploy_rolled_back", "critical", "a deployed head regressed and was rolled back"),
    "ReplayDeviceLost": ("device_lost", "critical", "the GPU is gone: replay runs on the CPU or is paused"),
    "IntakePaused": ("intake_paused", "critical", "a full disk paused intake: new traffic is not being stored"),
    "ShadowLiveDivergence": (
        "divergence",
        "critical",
        "the engine's own acceptance differs from the shadow replay of the registry's live head on the same requests",
    ),
}


class AlertRule(Section):
    detector: str = Field(min_length=1, description="the finding detector that raises this alert")
    severity: Literal["critical", "warning", "info"] = Field(default="warning", description="severity label")
    description: str = Field(default="", description="what the alert means")
    runbook_url: str = Field(default="", description="runbook link shown in notifications")


def default_alert_rules() -> dict[str, AlertRule]:
    return {
        name: AlertRule(detector=detector, severity=severity, description=description)  # type: ignore[arg-type]
        for name, (detector, severity, description) in ALERT_RULES_DEFAULT.items()
    }


Matcher = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)")]


class AlertRoute(Section):
    matchers: list[Matcher] = Field(
        min_length=1, description='label matchers, all must match: "severity=critical", "segment=~.*lang=zh.*"'
    )
    receiver: str = Field(min_length=1, description="receiver that gets matching alerts (first matching route wins)")


class InhibitRule(Section):
    source_matchers: list[Matcher] = Field(min_length=1, description="alerts that mute others while firing")
    target_matchers: list[Matcher] = Field(min_length=1, description="alerts that are muted")
    equal: list[str] = Field(default_factory=list, description="labels source and target must share")


def default_inhibit_rules() -> list[InhibitRule]:
    return [
        InhibitRule(
            source_matchers=["alertname=AcceptanceBelowThreshold"],
            target_matchers=["alertname=AcceptanceDropped"],
            equal=["segment"],
        )
    ]


LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # Prometheus and Alertmanager label names


class ReceiverConfig(Section):
    type: Literal["console", "slack", "webhook", "alertmanager"] = Field(
        description="console (log), slack, a JSON webhook, or alertmanager (its POST /api/v2/alerts)"
    )
    channel: str = Field(default="", description="slack with bot_token: channel name or id, e.g. #inference-oncall")
    bot_token: SecretSource = Field(default_factory=SecretSource, description="slack: xoxb- bot token, env or file")
    url: SecretSource = Field(
        default_factory=SecretSource, description="slack incoming-webhook URL, or the JSON webhook's URL; env or file"
    )
    slack_api_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL")
    alertmanager_url: str = Field(
        default="", description="alertmanager: its base URL, e.g. http://127.0.0.1:9093 (alerts go to /api/v2/alerts)"
    )
    basic_auth_user: str = Field(
        default="", description="alertmanager: HTTP basic-auth user (with basic_auth_password)"
    )
    basic_auth_password: SecretSource = Field(
        default_factory=SecretSource, description="alertmanager: HTTP basic-auth password, env or file"
    )
    bearer_token: SecretSource = Field(
        default_factory=SecretSource, description="alertmanager: bearer token (instead of basic auth), env or file"
    )
    resend_interval: DurationName = Field(
        default="1m", description="alertmanager: firing alerts are posted again this often while they fire"
    )
    lease: DurationName = Field(
        default="4m",
        description="alertmanager: each post sets a firing alert's endsAt this far ahead; Alertmanager resolves it "
        "by itself when no post renews it in time (at least 2 x resend_interval)",
    )
    generator_url: str = Field(
        default="", description="alertmanager: generatorURL when alerts.report_url is not set (empty: none)"
    )
    static_labels: dict[str, str] = Field(
        default_factory=dict, description='alertmanager: labels added to every alert, e.g. { service = "specwatch" }'
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="HTTP timeout per request")

    @model_validator(mode="after")
    def _complete(self) -> ReceiverConfig:
        if self.type == "slack" and not (self.bot_token.configured or self.url.configured):
            raise ValueError("a slack receiver needs bot_token (with channel) or url (incoming webhook)")
        if self.type == "slack" and self.bot_token.configured and not self.channel:
            raise ValueError("a slack receiver with bot_token needs channel")
        if self.type == "webhook" and not self.url.configured:
            raise ValueError("a webhook receiver needs url")
        if self.type == "alertmanager":
            self._check_alertmanager()
        return self

    def _check_alertmanager(self) -> None:
        if not self.alertmanager_url.lower().startswith(("http://", "https://")):
            raise ValueError("an alertmanager receiver needs alertmanager_url, starting with http:// or https://")
        if bool(self.basic_auth_user) != self.basic_auth_password.configured:
            raise ValueError("basic auth needs both basic_auth_user and basic_auth_password")
        if self.basic_auth_user and self.bearer_token.configured:
            raise ValueError("give basic auth or bearer_token, not both")
        if window_length(self.resend_interval) <= timedelta(0):
            raise ValueError("resend_interval must be longer than 0s")
        if window_length(self.lease) < 2 * window_length(self.resend_interval):
            raise ValueError(f"lease {self.lease} must be at least 2 x resend_interval {self.resend_interval}")
        if self.generator_url and not self.generator_url.lower().startswith(("http://", "https://")):
            raise ValueError("generator_url must start with http:// or https://")
        bad = sorted(name for name in self.static_labels if not LABEL_NAME.match(name))
        if bad:
            raise ValueError(f"static_labels: {', '.join(bad)} not a label name ([A-Za-z_][A-Za-z0-9_]*)")


def default_receivers() -> dict[str, ReceiverConfig]:
    return {"console": ReceiverConfig(type="console")}


class AlertsConfig(Section):
    receivers: dict[str, ReceiverConfig] = Field(
        default_factory=default_receivers, description="named notification targets"
    )
    default_receiver: str = Field(default="console", description="receiver for alerts no route matches")
    routes: list[AlertRoute] = Field(default_factory=list, description="routing by labels; first match wins")
    rules: dict[str, AlertRule] = Field(
        default_factory=default_alert_rules, description="alertname -> the detector that raises it and its severity"
    )
    inhibit_rules: list[InhibitRule] = Field(default_factory=default_inhibit_rules)
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "segment"], description="labels that group")
    group_wait: DurationName = Field(default="30s", description="wait before the first notification of a new group")
    group_interval: DurationName = Field(default="5m", description="wait before notifying changes to a group")
    repeat_interval: DurationName = Field(default="4h", description="re-notify a group that is still firing")
    resolve_after: DurationName = Field(default="15m", description="condition clear this long -> alert resolved")
    send_resolved: bool = Field(default=True, description="notify when a group's alerts have all resolved")
    report_url: str = Field(default="", description="link to the HTML report shown in notifications")
    dispatch_interval_s: float = Field(default=10.0, gt=0, description="daemon: how often the outbox is sent")
    max_backoff_s: float = Field(default=300.0, gt=0, description="longest wait between delivery retries")

    @model_validator(mode="after")
    def _receivers_exist(self) -> AlertsConfig:
        named = {self.default_receiver, *(route.receiver for route in self.routes)}
        missing = sorted(named - set(self.receivers))
        if missing:
            raise ValueError(f"unknown receiver(s) {', '.join(missing)}; define them under [alerts.receivers.NAME]")
        return self

    @model_validator(mode="after")
    def _leases_outlast_dispatch(self) -> AlertsConfig:
        """Resends are queued by dispatch runs: the lease must cover a resend interval plus one dispatch tick."""
        dispatch = timedelta(seconds=self.dispatch_interval_s)
        for name, receiver in self.receivers.items():
            if receiver.type != "alertmanager":
                continue
            if window_length(receiver.lease) <= window_length(receiver.resend_interval) + dispatch:
                raise ValueError(
                    f"receivers.{name}.lease {receiver.lease} must exceed resend_interval {receiver.resend_interval} "
                    f"+ dispatch_interval_s {self.dispatch_interval_s:g}"
                )
        return self


class CorpusConfig(Section):
    days: int = Field(default=30, ge=1, description="stored samples of the last N days form the corpus")
    max_samples: int = Field(default=20_000, ge=10, description="most samples in one corpus (train + holdout)")
    low_alpha_weight: float = Field(
        default=3.0, ge=1.0, description="a segment below the alert threshold gets up to this many times its share"
    )
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9, description="share of samples held out for the gate")
    regenerate_responses: bool = Field(
        default=False, description="train on the target's own greedy answers to the prompts instead of the logged ones"
    )
    max_new_tokens: int = Field(default=128, ge=1, description="tokens per regenerated answer")


def check_draft_kind(kind: str) -> str:
    """`kind` if it is "live" or a registered draft kind (decoder.drafts.DRAFT_KINDS), else ValueError
    naming the known kinds. Only a kind other than "live" imports the registry (and with it torch)."""
    if kind == "live":
        return kind
    from decoder.drafts import DRAFT_KINDS

    if kind not in DRAFT_KINDS:
        raise ValueError(f"unknown draft kind {kind!r}; known kinds: live, {', '.join(DRAFT_KINDS)}")
    return kind


class TrainingConfig(Section):
    kind: str = Field(
        default="live", description="draft kind to train; live = the live head's kind (and warm start from it)"
    )
    steps: int = Field(default=300, ge=1, description="optimizer steps")
    learning_rate: float = Field(default=1e-3, gt=0, le=1, description="peak AdamW learning rate")
    batch_size: int = Field(default=16, ge=1, description="sequences per step")
    sequence_length: int = Field(default=128, ge=8, description="tokens per training sequence")
    checkpoint_every: int = Field(default=50, ge=1, description="steps between checkpoints (a killed job resumes)")
    seed: int = Field(default=0, ge=0, description="seeds corpus split, batch order and initialization")
    eagle_train_depth: int = Field(
        default=3,
        ge=1,
        le=8,
        description="chained heads only (eagle, eagle3, mtp): chain depth unrolled in training (EAGLE-3's "
        "training-time test), fresh or warm-started; a step runs the head this many times",
    )
    device: str = Field(default="auto", description="auto = the GPU when present, else cpu")
    trainer: Literal["internal", "external"] = Field(
        default="internal",
        description="who trains: internal (in this process) or external (retrain.external.command, e.g. "
        "speculators under torchrun); `specwatch retrain --trainer` overrides it for one job",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return check_draft_kind(kind)


EXTERNAL_PLACEHOLDERS: dict[str, str] = {
    "target": "models.target, the verifier's directory",
    "aux_layer_ids": "the EAGLE-3 aux-layer ids, comma-separated, in vLLM's numbering (hidden_states indices)",
    "draft_vocab_size": "the draft vocabulary size",
    "corpus_dir": "the trainer's input directory: the corpus's train side only (the holdout stays in specwatch)",
    "train_jsonl": "the train samples in specwatch's own lines",
    "conversations_jsonl": "the train samples as speculators/ModelOpt chats ({conversations: [{role, content}]})",
    "sharegpt_jsonl": "the train samples as SpecForge ShareGPT ({id, conversations: [{from, value}]})",
    "trainer_manifest": "target, aux-layer ids, draft vocabulary, seed, corpus hash, the holdout's hash and count",
    "live_head": "the live head as a speculators checkpoint, for a warm start; empty when it is of another kind",
    "output_dir": "where the trainer writes checkpoints; the same directory when a job is resumed",
    "gpus": "retrain.external.gpus",
}
"""The `{name}`s a retrain.external.command may use (retrain.external builds their values)."""


def command_placeholders(command: list[str]) -> set[str]:
    """The `{name}` fields of a command template (`{{` and `}}` are literal braces); ValueError for a
    field with a format spec, a conversion, an index or an attribute, or a malformed brace."""
    names = set()
    for argument in command:
        try:
            fields = list(string.Formatter().parse(argument))
        except ValueError as exc:
            raise ValueError(f"argument {argument!r}: {exc}") from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if spec or conversion or not name.isidentifier():
                raise ValueError(f"argument {argument!r}: use plain {{name}} placeholders, got {{{name}...}}")
            names.add(name)
    return names


class ExternalTrainerConfig(Section):
    command: list[str] = Field(
        default_factory=list,
        description="the trainer, run as a subprocess in its own process group when retrain.training.trainer = "
        "external (or a script that submits a Kubernetes Job or Slurm batch and waits for it); placeholders "
        + ", ".join(f"{{{name}}}" for name in EXTERNAL_PLACEHOLDERS)
        + "; it must write a checkpoint that `specwatch heads import` reads (speculators' EAGLE-3) under "
        "{output_dir}. See README, Retrain with an external trainer",
    )
    working_dir: Path | None = Field(default=None, description="the command's working directory; unset = the job's")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="variables added to the command's environment (it inherits specwatch's: pass secrets that way, "
        "never here)",
    )
    timeout: DurationName = Field(default="48h", description="the run is killed and the job fails after this long")
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="how often the child's liveness and log tail are stored on the job"
    )
    gpus: int = Field(default=1, ge=1, description="the value of {gpus} (e.g. torchrun --nproc_per_node)")
    checkpoint_subdir: str = Field(
        default="",
        description="the checkpoint's directory under {output_dir}; empty = {output_dir} itself when it holds one, "
        "else the newest directory under it that holds a head",
    )

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: list[str]) -> list[str]:
        unknown = command_placeholders(command) - set(EXTERNAL_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(sorted(unknown))}; known: {', '.join(EXTERNAL_PLACEHOLDERS)}"
            )
        return command

    @field_validator("checkpoint_subdir")
    @classmethod
    def _relative(cls, subdir: str) -> str:
        if subdir and (Path(subdir).is_absolute() or ".." in Path(subdir).parts):
            raise ValueError("checkpoint_subdir is a relative path under {output_dir}")
        return subdir


class GateConfig(Section):
    min_alpha_gain: float = Field(
        default=0.01, ge=0.0, description="overall alpha must improve by this much, at the interval's lower end"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="confidence of the paired bootstrap")
    segment_min_samples: int = Field(default=20, ge=1, description="segments with fewer holdout samples are not judged")
    segment_tolerance: float = Field(default=0.02, ge=0.0, description="a judged segment may lose at most this alpha")
    lossless_samples: int = Field(default=4, ge=1, description="holdout prompts checked for exact-mode losslessness")
    lossless_max_new_tokens: int = Field(default=32, ge=1, description="tokens generated per lossless check")


def check_head_format(name: str) -> str:
    """`name` if it is "auto", "specwatch" or a registered engine head format (decoder.formats.FORMATS),
    else ValueError naming the known ones. Only a name other than "auto" imports the registry (torch)."""
    if name in ("auto", "specwatch"):
        return name
    from decoder.formats import FORMATS

    if name not in FORMATS:
        raise ValueError(f"unknown head format {name!r}; known formats: auto, specwatch, {', '.join(FORMATS)}")
    return name


class DeployConfig(Section):
    command: list[str] = Field(
        default_factory=list,
        description='run after the live pointer switched, e.g. ["systemctl", "reload", "vllm"]; env '
        "SPECWATCH_HEAD_VERSION, SPECWATCH_HEAD_FORMAT, SPECWATCH_HEAD_EXPORT_DIR (the head in the engine's "
        "format) and SPECWATCH_HEAD_DIR (the registry's copy)",
    )
    url: str = Field(
        default="",
        description="or POST {version, format, export_dir, path} as JSON to this URL (the serving engine)",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="the hook's time limit")
    format: str = Field(
        default="auto",
        description="the format the engine loads: auto (the format the live head's lineage was imported in, "
        "else the first engine format of its kind), speculators, sglang, vllm-medusa, mtp, causal-lm, specwatch",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, name: str) -> str:
        return check_head_format(name)


class WatchConfig(Section):
    window: WindowName = Field(default="6h", description="after a deploy, live alpha is compared for this long")
    min_samples: int = Field(default=50, ge=1, description="samples the new head needs before it is judged")
    tolerance: float = Field(default=0.03, ge=0.0, description="a drop below the old head by more than this rolls back")


class RetrainConfig(Section):
    heads_dir: Path = Field(default=Path("heads"), description="head registry; relative = under storage.data_dir")
    schedule: str = Field(
        default="0 3 1 1,4,7,10 *", description="quarterly retrain, crontab (minute hour day month weekday)"
    )
    timezone: str = Field(default="UTC", description="time zone of the schedule")
    recapture_after: DurationName = Field(
        default="6h", description="a breach or drop alert firing this long starts a retrain early"
    )
    cooldown: DurationName = Field(default="3d", description="no recapture retrain within this long of the last one")
    heartbeat_s: float = Field(default=10.0, gt=0, description="a running job refreshes its heartbeat this often")
    stale_after_s: float = Field(default=120.0, gt=0, description="a job silent this long is dead; its lock frees")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    external: ExternalTrainerConfig = Field(default_factory=ExternalTrainerConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)

    @model_validator(mode="after")
    def _external_needs_command(self) -> RetrainConfig:
        if self.training.trainer == "external" and not self.external.command:
            raise ValueError("retrain.training.trainer = external needs retrain.external.command")
        return self


class EngineEndpointConfig(Section):
    url: str = Field(
        pattern=r"^https?://", description="the engine's Prometheus endpoint, e.g. http://127.0.0.1:8000/metrics"
    )
    kind: Literal["vllm"] = Field(
        default="vllm",
        description="whose counters: vllm (spec_decode_* counters). SGLang's spec gauges are per batch and cannot "
        "be summed over a window, so they are not scraped",
    )
    interval_s: float = Field(default=30.0, ge=1.0, description="seconds between scrapes")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="HTTP timeout of one scrape")


class MetricsConfig(Section):
    enabled: bool = Field(default=True, description="serve Prometheus metrics at http://host:port/metrics")
    host: str = Field(default="127.0.0.1", description="bind address of the metrics endpoint")
    port: int = Field(default=9464, ge=0, le=65535, description="TCP port of the metrics endpoint (0 picks a free one)")
    otlp_endpoint: str = Field(
        default="",
        description="OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318 (metrics to /v1/metrics, spans to "
        "/v1/traces); empty = no OTLP export. Needs the opentelemetry-exporter-otlp package",
    )
    service_name: str = Field(default="specwatch", min_length=1, description="service.name resource attribute")


class DaemonConfig(Section):
    log_format: Literal["text", "json"] = Field(
        default="text", description="`specwatch run` logs to stdout (journald): text lines, or one JSON object a line"
    )
    max_replay_lag_s: float = Field(
        default=900.0,
        gt=0,
        description="/readyz answers 503 while the oldest sample waiting for replay has waited longer than this",
    )
    stall_after_s: float = Field(
        default=600.0,
        gt=0,
        description="no replay round completed for this long: systemd watchdog pings stop, so systemd restarts "
        "the daemon (a round that fails only because the database is down still counts as completed)",
    )
    job_stall_after_s: float = Field(
        default=300.0,
        gt=0,
        description="/readyz answers 503, naming the job, while a scheduled job has made no progress for this long "
        "(progress: a replay round, an intake batch, or a whole run of any other job)",
    )
    stop_timeout_s: float = Field(
        default=45.0,
        gt=0,
        description="on SIGTERM, how long running jobs may take to finish before they are abandoned; "
        "keep it below the unit's TimeoutStopSec",
    )


class Config(Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    engines: dict[str, EngineEndpointConfig] = Field(
        default_factory=dict,
        description='serving engines whose spec-decode counters are scraped: [engines.NAME] with url = "http://HOST:8000/metrics"',
    )
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)

    @model_validator(mode="after")
    def _exposed_http_needs_token(self) -> Config:
        http = self.intake.http
        if http.enabled and not http.is_loopback and not http.token.configured:
            raise ValueError(f"intake.http.host is {http.host}, not loopback: set intake.http.token.env or .file")
        return self

    def resolve_paths(self, base: Path) -> Config:
        """Make relative paths relative to the config file's directory."""

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()

        storage = self.storage.model_copy(update={"data_dir": absolute(self.storage.data_dir)})
        follow = self.intake.follow.model_copy(update={"paths": [absolute(p) for p in self.intake.follow.paths]})
        intake = self.intake.model_copy(update={"follow": follow})
        drift = self.drift.model_copy(
            update={"reference_corpus": absolute(self.drift.reference_corpus) if self.drift.reference_corpus else None}
        )
        models = self.models.model_copy(
            update={
                "target": absolute(self.models.target) if self.models.target else None,
                "draft": absolute(self.models.draft) if self.models.draft else None,
            }
        )
        external = self.retrain.external
        working_dir = absolute(external.working_dir) if external.working_dir else None
        retrain = self.retrain.model_copy(update={"external": external.model_copy(update={"working_dir": working_dir})})
        return self.model_copy(
            update={"storage": storage, "intake": intake, "models": models, "drift": drift, "retrain": retrain}
        )

    @property
    def replays(self) -> bool:
        """Shadow replay runs: enabled, with a target and a draft to replay through. Otherwise specwatch runs
        on the engines' own acceptance alone (GPU-free mode)."""
        return self.replay.enabled and self.models.target is not None and self.models.draft is not None

    @property
    def heads_dir(self) -> Path:
        """The head registry's directory (retrain.heads_dir, under the data dir unless absolute)."""
        heads = self.retrain.heads_dir
        return heads if heads.is_absolute() else self.storage.data_dir / heads

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{self.storage.data_dir / 'specwatch.db'}"


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def format_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (secrets go in *.env or *.file, never inline)"
        problems.append(f"{key}: {message}")
    return problems


def parse_config(text: str, path: Path) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"(syntax): {exc}"]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, format_validation_error(exc)) from None
    return config.resolve_paths(path.parent.resolve())


def load_config(path: Path | str | None = None) -> Config:
    """Load and validate the config file; a missing default file means all defaults."""
    explicit = path is not None or CONFIG_ENV in os.environ
    config_path = Path(path) if path is not None else default_config_path()
    if not config_path.exists():
        if explicit:
            raise ConfigError(config_path, ["(file): does not exist"])
        return Config().resolve_paths(Path.cwd())
    return parse_config(config_path.read_text(encoding="utf-8"), config_path)
