"""Evaluation at scale: wall time and peak resident memory of `specwatch evaluate` over N scored replay results in
2,000 segments, on SQLite and PostgreSQL (goal: 1,000,000 results in at most 30 s and 500 MB).

    python bench/evaluate_scale.py --data-dir /tmp/evalbench                  # 100k, 300k, 1M; SQLite and PostgreSQL
    python bench/evaluate_scale.py --data-dir /tmp/evalbench --sizes 100k --backends sqlite --runs 3
    python bench/evaluate_scale.py --data-dir /tmp/evalbench --sizes 100k --checkout ../other-branch  # its code
    python bench/evaluate_scale.py --data-dir /tmp/evalbench --sizes 100k --profile   # then one run under cProfile
    python bench/evaluate_scale.py --data-dir /tmp/evalbench --generate-only         # the data, no measurement

The data. Each result is a `samples` row (short texts in five languages) and its scored `replay_results` row with
the counts the replayer writes: window k = 4, the accept histogram and per-position lists (integers for greedy
samples, expectations for sampled ones), the per-token `outcomes`. 2% of the samples also have an exact-mode row
with a speedup (evaluate reads them for the cost ratio), and --live-share of them a `live_results` row as vLLM
reports it (half per-step, half histogram-estimated R). The 2,000 segments are 25 tenants (hashed, as intake
stores them) x 4 regions x 4 routes x 5 languages with skewed traffic shares, each segment present; the results
are spread evenly over the 14 days evaluate looks back (twice drift.change_window); one tenant's ja segments sit
below the threshold and another's zh drop over the last two days, so there are findings to file. The schema is
the project's own: the checkout under test migrates an empty database to 0009, the revision these rows are written
for, and its later migrations, if any, run over the rows.

The measurement. `python -m monitor evaluate` runs as a subprocess with PYTHONPATH = --checkout (default: this
repository), on a config whose head registry names the results' draft version as the live head. Input drift is
off (input_min_rows above input_max_rows: it would read sample texts and run evidently; --input-drift turns it
on); alerts go to the console receiver. Before each run the checkout migrates the database (not timed) and the
tables evaluate writes (findings, alerts, notification log, outbox) are emptied, so each run is a first
evaluation. seconds: the child's wall time, interpreter start and imports included; cpu s: its user + system time
(steadier than wall time on a shared machine; the PostgreSQL server's own time is not in it); peak MB: its
ru_maxrss. `--sizes 0` measures the floor: an empty database, i.e. the interpreter and evaluate's imports.

Reuse. With --data-dir DIR the generated databases are kept (SQLite files, configs and bench.json under DIR;
PostgreSQL databases evalbench_<size>_<hash of DIR>) and reused when a later run asks for the same size, seed and
live share; data older than --max-age-minutes has its timestamps shifted to now first. --regenerate forces new
data; a database that a newer checkout migrated past what the measured checkout knows is generated anew. Without
--data-dir everything lives in a temporary directory and is dropped at the end. Generating took 10 s for 100k
results on SQLite (a 390 MB file), 14 s on PostgreSQL; 107 s and 146 s for 1M (3.9 GB and 2.9 GB).

Measured on main at 7fc2a77, 2 cores shared with other work (load 2-5, so wall seconds are noisy):

    backend      results  seconds  cpu s  peak MB
    sqlite             0      7.7    6.4      577   the floor: importing decoder (torch, transformers) is most of it
    sqlite       100,000     35.2   30.2     2001
    postgresql   100,000     38.8   30.4     2114
    sqlite       300,000    107.2   93.9     4973
    (1M not run on that code: minutes and tens of GB)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import pstats
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psycopg
from psycopg import sql

from retrain.registry import HEAD_FILE, HeadManifest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = 1
"""bump when the generated rows change: cached databases of another generator are generated anew"""
SCHEMA_REVISION = "0009"
"""the schema the rows are written for"""
DRAFT_VERSION = "e7a1b2c3d4e5f607"
TARGET_VERSION = "5eed0f7a12b3c4d5"
WINDOW_K = 4
LOOKBACK = timedelta(days=14)
DROP_SPAN = timedelta(days=2)
CHUNK = 50_000
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

TENANTS = 25
REGIONS = {"us": 0.35, "eu": 0.3, "sg": 0.2, "jp": 0.15}
ROUTES = {"chat": 0.4, "completion": 0.25, "agent": 0.2, "summarize": 0.15}
LANGUAGES = {"en": 0.4, "code": 0.2, "zh": 0.15, "zh-en": 0.15, "ja": 0.1}
LANGUAGE_ALPHA = {"en": 0.80, "code": 0.84, "zh": 0.72, "zh-en": 0.74, "ja": 0.70}
BREACHING = (0, "ja")  # (tenant rank, language) whose 16 segments sit at alpha 0.55: threshold findings
DROPPING = (1, "zh")  # ... whose 16 segments lose 0.15 over the last DROP_SPAN: change findings
PROMPTS = {
    "en": ["How do I keep the KV cache warm between deploys?", "Summarize this incident report for the on-call."],
    "code": ["def merge(a, b):\n    return sorted(a + b)\n\nMake it linear.", "for i in range(len(xs)): xs.pop(i)"],
    "zh": ["请解释一下推测解码为什么能加速大模型推理。", "帮我总结这份会议纪要的要点。"],
    "zh-en": ["帮我用Python写一个function来parse JSON file", "这个API的rate limit是多少？"],
    "ja": ["投機的デコーディングの仕組みを説明してください。", "この文章を丁寧な日本語に直してください。"],
}
COMPLETIONS = {
    "en": "The cache keeps the keys and values of earlier tokens, so the next step attends without recomputing. " * 3,
    "code": "def merge(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        ...\n" * 2,
    "zh": "推测解码让小模型先起草几个词元，再由大模型一次性验证，接受率越高速度越快。" * 4,
    "zh-en": "可以用json.loads读取文件内容，然后用try/except处理JSONDecodeError。" * 4,
    "ja": "小さなモデルが先に数トークンを提案し、大きなモデルがまとめて検証します。" * 4,
}

SAMPLE_COLUMNS = (
    "id", "sample_key", "received_at", "occurred_at", "segment", "language", "source", "model", "temperature",
    "messages", "completion", "attributes", "redactions", "prompt_chars", "completion_chars", "raw_prompt",
    "finish_reason", "max_tokens", "prompt_token_ids", "completion_token_ids",
)  # fmt: skip
RESULT_COLUMNS = (
    "id", "sample_id", "segment", "occurred_at", "replayed_at", "draft_version", "target_version", "mode", "window",
    "temperature", "accepted", "rejected", "drafted", "steps", "counts", "outcomes", "target_agreement",
    "prompt_tokens", "completion_tokens", "truncated_tokens", "skipped", "seconds", "speedup", "worker",
    "token_source", "retokenized_equal",
)  # fmt: skip
LIVE_COLUMNS = (
    "id", "sample_key", "sample_id", "received_at", "occurred_at", "segment", "language", "model", "engine",
    "method", "num_spec_tokens", "steps", "drafted", "accepted", "rejected", "rejected_basis", "counts",
)  # fmt: skip
EVALUATION_TABLES = ("findings", "alerts", "notification_log", "alert_outbox", "alert_outbox_leases")

MIGRATE = """
import sys
from alembic.script import ScriptDirectory
from monitor.base.db import alembic_config, create_db_engine, current_revision, upgrade
engine = create_db_engine(sys.argv[1])
known = {script.revision for script in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}
current = current_revision(engine)
if current is not None and current not in known:
    sys.exit(3)
upgrade(engine, sys.argv[2])
"""
AHEAD = 3  # MIGRATE's exit status: the database is at a revision the checkout does not know


# -- sizes and where each database lives -------------------------------------------------------------


def parse_size(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(results: int) -> str:
    if results >= 1_000_000 and results % 1_000_000 == 0:
        return f"{results // 1_000_000}M"
    return f"{results // 1000}k" if results >= 1000 and results % 1000 == 0 else str(results)


@dataclass(frozen=True)
class Dataset:
    """One generated database: its directory (config.toml, bench.json, heads/, models/, the SQLite file) and URL."""

    backend: str
    results: int
    directory: Path
    url: str
    postgres_database: str | None = None

    @property
    def config(self) -> Path:
        return self.directory / "config.toml"

    @property
    def meta(self) -> Path:
        return self.directory / "bench.json"


def dataset_for(backend: str, results: int, data_dir: Path, admin_url: str, tag: str) -> Dataset:
    directory = data_dir / f"{backend}-{size_label(results)}"
    if backend == "sqlite":
        return Dataset(backend, results, directory, f"sqlite:///{directory / 'specwatch.db'}")
    name = f"evalbench_{size_label(results).lower()}_{tag}"
    url = psycopg.conninfo.conninfo_to_dict(admin_url)
    host, port, user = url.get("host", "127.0.0.1"), url.get("port", 5432), url.get("user", "postgres")
    return Dataset(backend, results, directory, f"postgresql+psycopg://{user}@{host}:{port}/{name}", name)


def libpq_url(dataset: Dataset) -> str:
    return dataset.url.replace("postgresql+psycopg://", "postgresql://", 1)


# -- segments and rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segments:
    names: list[str]
    languages: list[str]
    attributes: list[str]
    """the samples' `attributes` JSON: hashed tenant, region, route"""
    shares: np.ndarray
    alpha: np.ndarray
    drop: np.ndarray
    """alpha lost over the last DROP_SPAN"""


def hashed_tenant(index: int) -> str:
    return "h:" + hmac.new(b"evalbench", f"t{index:04d}".encode(), hashlib.sha256).hexdigest()[:16]


def make_segments(rng: np.random.Generator) -> Segments:
    """TENANTS x regions x routes x languages = 2,000 segments; shares skewed by tenant rank and by label;
    alpha by language, +-0.04 per segment, one tenant's ja breaching and another's zh dropping."""
    names, languages, attributes, shares, alphas, tenants = [], [], [], [], [], []
    for index in range(TENANTS):
        tenant = hashed_tenant(index)
        for region, region_share in REGIONS.items():
            for route, route_share in ROUTES.items():
                for language, language_share in LANGUAGES.items():
                    names.append(f"tenant={tenant}/region={region}/route={route}/lang={language}")
                    languages.append(language)
                    tenants.append((index, language))
                    attributes.append(json.dumps({"tenant": tenant, "region": region, "route": route}))
                    shares.append((index + 1) ** -0.6 * region_share * route_share * language_share)
                    alphas.append(LANGUAGE_ALPHA[language])
    alpha = np.clip(np.array(alphas) + rng.normal(0.0, 0.04, len(names)), 0.3, 0.95)
    alpha[[tenant == BREACHING for tenant in tenants]] = 0.55
    drop = np.array([0.15 if tenant == DROPPING else 0.0 for tenant in tenants])
    share = np.array(shares)
    return Segments(names, languages, attributes, share / share.sum(), alpha, drop)


def chain_probabilities(q: np.ndarray, k: int) -> np.ndarray:
    """P(a = j), j = 0..k, for a chain accepting each proposal with probability q (then alpha = q)."""
    powers = q[:, None] ** np.arange(k + 1)[None, :]
    probabilities = powers * (1.0 - q[:, None])
    probabilities[:, k] = powers[:, k]
    return probabilities


def trimmed(values: list[float]) -> list[float]:
    """Without trailing zeros, the shape AcceptCounts.add_step and the scored counts build."""
    end = len(values)
    while end and values[end - 1] == 0.0:
        end -= 1
    return values[:end]


@dataclass(frozen=True)
class Counts:
    """Verify-step counts of a batch of replays: one row per sample."""

    histogram: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray
    drafted: np.ndarray
    steps: np.ndarray
    eos_ended: np.ndarray

    @property
    def completion_tokens(self) -> np.ndarray:
        return np.rint(self.accepted + self.steps - self.eos_ended).astype(np.int64) + 1

    def as_dicts(self) -> list[dict[str, Any]]:
        """AcceptCounts.to_dict() of each row."""
        per_position = np.cumsum(self.histogram[:, ::-1], axis=1)[:, ::-1][:, 1:]
        columns = zip(
            self.accepted.tolist(),
            self.rejected.tolist(),
            self.drafted.tolist(),
            self.steps.tolist(),
            self.eos_ended.tolist(),
            self.histogram.tolist(),
            per_position.tolist(),
            strict=True,
        )
        return [
            {
                "accepted": accepted,
                "rejected": rejected,
                "drafted": drafted,
                "steps": steps,
                "eos_ended": eos,
                "accept_histogram": trimmed(histogram),
                "accepted_per_position": trimmed(positions),
            }
            for accepted, rejected, drafted, steps, eos, histogram, positions in columns
        ]


def replay_counts(q: np.ndarray, steps: np.ndarray, greedy: np.ndarray, rng: np.random.Generator) -> Counts:
    """Greedy replays count whole steps (a multinomial draw); sampled ones store expectations."""
    probabilities = chain_probabilities(q, WINDOW_K)
    drawn = rng.multinomial(steps, probabilities).astype(np.float64)
    histogram = np.where(greedy[:, None], drawn, steps[:, None] * probabilities)
    full = histogram[:, WINDOW_K]
    eos_ended = np.where(greedy, (full >= 1) & (rng.random(len(q)) < 0.5), 0.5 * probabilities[:, WINDOW_K])
    return Counts(
        histogram=histogram,
        accepted=histogram @ np.arange(WINDOW_K + 1, dtype=np.float64),
        rejected=steps - full,
        drafted=WINDOW_K * steps.astype(np.float64),
        steps=steps.astype(np.float64),
        eos_ended=eos_ended.astype(np.float64),
    )


class OutcomePool:
    """Per-token first-proposal acceptances as the replayer stores them (rounded to 4 places), cut from long
    preformatted runs: 0/1 for greedy samples, probabilities for sampled ones."""

    def __init__(self, rng: np.random.Generator, size: int = 1 << 20) -> None:
        self.greedy = np.where(rng.random(size) < 0.75, "1.0", "0.0").tolist()
        self.sampled = [repr(round(value, 4)) for value in rng.beta(5.0, 2.0, size).tolist()]
        self.rng = rng

    def json(self, length: int, greedy: bool) -> str:
        pool = self.greedy if greedy else self.sampled
        start = int(self.rng.integers(0, len(pool) - length))
        return "[" + ", ".join(pool[start : start + length]) + "]"


def stamps(moments: np.ndarray, suffix: str) -> np.ndarray:
    """Epoch seconds as the naive-UTC text SQLAlchemy stores on SQLite (suffix "+00" for PostgreSQL)."""
    text = np.datetime_as_string((moments * 1e6).astype("datetime64[us]"), unit="us")
    return np.array([value.replace("T", " ") + suffix for value in text.tolist()], dtype=object)


@dataclass(frozen=True)
class Drawn:
    """One chunk of samples as drawn: what their rows in the three tables are built from."""

    ids: np.ndarray
    keys: np.ndarray
    occurred: np.ndarray
    received: np.ndarray
    replayed: np.ndarray
    segment: np.ndarray
    greedy: np.ndarray
    q: np.ndarray
    """the sample's per-proposal acceptance (its alpha)"""
    steps: np.ndarray

    def subset(self, chosen: np.ndarray) -> Drawn:
        return Drawn(**{name: values[chosen] for name, values in vars(self).items()})


@dataclass
class Batch:
    samples: list[tuple[Any, ...]]
    results: list[tuple[Any, ...]]
    live: list[tuple[Any, ...]]


class Generator:
    """Rows of N results in time order, a chunk at a time, with ids counted from 1 in each table."""

    def __init__(self, results: int, anchor: datetime, seed: int, live_share: float, time_suffix: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.segments = make_segments(self.rng)
        self.anchor = anchor.timestamp()
        self.live_share = live_share
        self.suffix = time_suffix
        self.pool = OutcomePool(self.rng)
        start = self.anchor - LOOKBACK.total_seconds() + 3600.0
        self.times = np.sort(self.rng.uniform(start, self.anchor - 1.0, results))
        self.segment_of = self.rng.choice(len(self.segments.names), size=results, p=self.segments.shares)
        if results >= len(self.segments.names):  # every segment present at least once
            chosen = self.rng.choice(results, size=len(self.segments.names), replace=False)
            self.segment_of[chosen] = np.arange(len(self.segments.names))
        self.result_id = 0
        self.live_id = 0

    def batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.times), CHUNK):
            drawn = self.draw(start, self.times[start : start + CHUNK], self.segment_of[start : start + CHUNK])
            samples, scored = self.sample_rows(drawn), self.scored_rows(drawn)
            exact = self.exact_rows(drawn.subset(self.rng.random(len(drawn.ids)) < 0.02))
            live = self.live_rows(drawn.subset(self.rng.random(len(drawn.ids)) < self.live_share))
            yield Batch(samples, scored + exact, live)

    def draw(self, first: int, times: np.ndarray, segment: np.ndarray) -> Drawn:
        rng, count = self.rng, len(times)
        recent = times > self.anchor - DROP_SPAN.total_seconds()
        q = self.segments.alpha[segment] - self.segments.drop[segment] * recent
        ids = np.arange(first + 1, first + count + 1)
        return Drawn(
            ids=ids,
            keys=np.array([hashlib.sha256(f"evalbench:{i}".encode()).hexdigest() for i in ids.tolist()], dtype=object),
            occurred=stamps(times, self.suffix),
            received=stamps(np.minimum(times + 1.0, self.anchor), self.suffix),
            replayed=stamps(np.minimum(times + rng.uniform(5.0, 120.0, count), self.anchor), self.suffix),
            segment=segment,
            greedy=rng.random(count) < 0.7,
            q=np.clip(q + rng.normal(0.0, 0.06, count), 0.05, 0.98),
            steps=np.clip(np.rint(rng.lognormal(np.log(50.0), 0.9, count)), 2, 1500).astype(np.int64),
        )

    def sample_rows(self, drawn: Drawn) -> list[tuple[Any, ...]]:
        segments, rows = self.segments, []
        variants = self.rng.integers(0, 2, len(drawn.ids)).tolist()
        stopped = (self.rng.random(len(drawn.ids)) < 0.95).tolist()
        columns = zip(
            drawn.ids.tolist(), drawn.keys, drawn.occurred, drawn.received, drawn.segment.tolist(),
            drawn.greedy.tolist(), variants, stopped, strict=True,
        )  # fmt: skip
        for sample_id, key, at, got, segment, greedy, variant, stop in columns:
            language = segments.languages[segment]
            prompt, completion = PROMPTS[language][variant], COMPLETIONS[language]
            rows.append(
                (sample_id, key, got, at, segments.names[segment], language, "/var/log/llm-gateway/traffic.jsonl",
                 "qwen2.5-7b-instruct", 0.0 if greedy else 0.7, json.dumps([{"role": "user", "content": prompt}]),
                 completion, segments.attributes[segment], "{}", len(prompt), len(completion), False,
                 "stop" if stop else "length", None if stop else 1024, None, None)
            )  # fmt: skip
        return rows

    def scored_rows(self, drawn: Drawn) -> list[tuple[Any, ...]]:
        rng, rows, count = self.rng, [], len(drawn.ids)
        counts = replay_counts(drawn.q, drawn.steps, drawn.greedy, rng)
        agreement = np.clip(drawn.q + rng.normal(0.0, 0.05, count), 0.0, 1.0).tolist()
        prompt_tokens = np.clip(np.rint(rng.lognormal(np.log(180.0), 0.8, count)), 5, 8000).astype(int).tolist()
        from_ids = (rng.random(count) < 0.3).tolist()
        differs = (rng.random(count) < 0.03).tolist()
        columns = zip(
            drawn.ids.tolist(), drawn.occurred, drawn.replayed, drawn.segment.tolist(), drawn.greedy.tolist(),
            counts.as_dicts(), counts.completion_tokens.tolist(), agreement, prompt_tokens, from_ids, differs,
            strict=True,
        )  # fmt: skip
        for sample_id, at, done, segment, greedy, values, tokens, agrees, prompt, ids_used, differ in columns:
            self.result_id += 1
            rows.append(
                (self.result_id, sample_id, self.segments.names[segment], at, done, DRAFT_VERSION, TARGET_VERSION,
                 "scored", WINDOW_K, 0.0 if greedy else 0.7, values["accepted"], values["rejected"],
                 values["drafted"], values["steps"], json.dumps(values), self.pool.json(tokens, greedy), agrees,
                 prompt, tokens, 0, None, tokens * 0.0021, None, "evalbench:4242",
                 "ids" if ids_used else "text", (not differ) if ids_used else None)
            )  # fmt: skip
        return rows

    def exact_rows(self, drawn: Drawn) -> list[tuple[Any, ...]]:
        """Exact-mode replays of up to 64 new tokens, with the speedup measured (cost ratio c about 0.08)."""
        count = len(drawn.ids)
        counts = replay_counts(drawn.q, self.rng.integers(8, 30, count), np.ones(count, dtype=bool), self.rng)
        tokens = np.minimum(counts.completion_tokens, 64)
        tau = (counts.accepted + counts.steps - counts.eos_ended) / counts.steps
        speedup = tau / (1.0 + WINDOW_K * 0.08) * self.rng.normal(1.0, 0.05, count)
        rows = []
        columns = zip(
            drawn.ids.tolist(), drawn.occurred, drawn.replayed, drawn.segment.tolist(), drawn.greedy.tolist(),
            counts.as_dicts(), tokens.tolist(), speedup.tolist(), strict=True,
        )  # fmt: skip
        for sample_id, at, done, segment, greedy, values, emitted, measured in columns:
            self.result_id += 1
            rows.append(
                (self.result_id, sample_id, self.segments.names[segment], at, done, DRAFT_VERSION, TARGET_VERSION,
                 "exact", WINDOW_K, 0.0 if greedy else 0.7, values["accepted"], values["rejected"],
                 values["drafted"], values["steps"], json.dumps(values), "[]", None, 180, emitted, 0, None,
                 emitted * 0.03, measured, "evalbench:4242", "text", None)
            )  # fmt: skip
        return rows

    def live_rows(self, drawn: Drawn) -> list[tuple[Any, ...]]:
        """vLLM's per-request report of the same requests: half `detailed` (per-step arrays, R exact), half
        `summary` (histogram only, R estimated as S - hist[k])."""
        rng, count = self.rng, len(drawn.ids)
        q = np.clip(drawn.q + rng.normal(0.0, 0.02, count), 0.05, 0.98)
        histograms = rng.multinomial(drawn.steps, chain_probabilities(q, WINDOW_K))
        per_position = np.cumsum(histograms[:, ::-1], axis=1)[:, ::-1][:, 1:]
        detailed = (rng.random(count) < 0.5).tolist()
        rows = []
        columns = zip(
            drawn.ids.tolist(), drawn.keys, drawn.occurred, drawn.received, drawn.segment.tolist(), histograms,
            per_position.tolist(), drawn.steps.tolist(), detailed, strict=True,
        )  # fmt: skip
        for sample_id, key, at, got, segment, histogram, positions, steps, per_step in columns:
            accepted = int(histogram @ np.arange(WINDOW_K + 1))
            rejected = steps - int(histogram[WINDOW_K])
            basis = "per_step" if per_step else "histogram"
            report = {
                "engine": "vllm", "method": "eagle3", "num_spec_tokens": WINDOW_K, "steps": steps,
                "drafted": WINDOW_K * steps, "accepted": accepted, "rejected": rejected, "rejected_basis": basis,
                "accept_histogram": histogram.tolist(), "accepted_per_position": positions,
                "per_step_accepted": rng.permutation(np.repeat(np.arange(WINDOW_K + 1), histogram)).tolist()
                if per_step else None,
                "per_step_drafted": [WINDOW_K] * steps if per_step else None,
            }  # fmt: skip
            self.live_id += 1
            rows.append(
                (self.live_id, key, sample_id, got, at, self.segments.names[segment],
                 self.segments.languages[segment], "qwen2.5-7b-instruct", "vllm", "eagle3", WINDOW_K, steps,
                 WINDOW_K * steps, accepted, rejected, basis, json.dumps(report))
            )  # fmt: skip
        return rows


# -- writing -------------------------------------------------------------------------------------------


class Writer(Protocol):
    time_suffix: str

    def write(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None: ...

    def commit(self) -> None: ...

    def finish(self) -> None: ...


class SqliteWriter:
    """executemany through sqlite3 itself: the values are already in the text SQLAlchemy would store."""

    time_suffix = ""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path)
        self.connection.execute("PRAGMA synchronous=OFF")

    def write(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * len(columns))
        self.connection.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def commit(self) -> None:
        self.connection.commit()

    def finish(self) -> None:
        self.connection.commit()
        self.connection.close()


class PostgresWriter:
    """COPY FROM STDIN; then the id sequences past the explicit ids, and ANALYZE (autovacuum would, soon)."""

    time_suffix = "+00"

    def __init__(self, url: str) -> None:
        self.connection = psycopg.connect(url)

    def write(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def commit(self) -> None:
        self.connection.commit()

    def finish(self) -> None:
        for table in ("samples", "replay_results", "live_results"):
            next_id = sql.SQL("(SELECT coalesce(max(id), 0) + 1 FROM {})").format(sql.Identifier(table))
            setval = sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), {}, false)")
            self.connection.execute(setval.format(sql.Literal(table), next_id))
        self.connection.commit()
        self.connection.autocommit = True
        self.connection.execute("ANALYZE")
        self.connection.close()


def write_rows(writer: Writer, results: int, anchor: datetime, seed: int, live_share: float) -> dict[str, int]:
    generator = Generator(results, anchor, seed, live_share, writer.time_suffix)
    written = {"samples": 0, "replay_results": 0, "live_results": 0}
    for batch in generator.batches():
        writer.write("samples", SAMPLE_COLUMNS, batch.samples)
        writer.write("replay_results", RESULT_COLUMNS, batch.results)
        writer.write("live_results", LIVE_COLUMNS, batch.live)
        writer.commit()
        written["samples"] += len(batch.samples)
        written["replay_results"] += len(batch.results)
        written["live_results"] += len(batch.live)
    writer.finish()
    written["segments"] = len(set(generator.segment_of.tolist()))
    return written


# -- the data set on disk ------------------------------------------------------------------------------


def child_environment(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "SPECWATCH_HASH_SALT": "evalbench"}


def migrate(dataset: Dataset, checkout: Path, revision: str) -> bool:
    """The checkout migrates the database to `revision`; False when the database is past what it knows."""
    done = subprocess.run(
        [sys.executable, "-c", MIGRATE, dataset.url, revision],
        env=child_environment(checkout),
        cwd=dataset.directory,
        capture_output=True,
        text=True,
    )
    if done.returncode == AHEAD:
        return False
    if done.returncode != 0:
        raise SystemExit(f"migrating {dataset.url} with {checkout} failed:\n{done.stderr[-3000:]}")
    return True


def write_config(dataset: Dataset, input_drift: bool) -> None:
    """A config whose live head is the registry entry DRAFT_VERSION; input drift off unless asked for."""
    drift = "" if input_drift else "input_min_rows = 1000000\ninput_max_rows = 10\n"
    database = "" if dataset.backend == "sqlite" else dataset.url
    dataset.config.write_text(
        f'[storage]\ndata_dir = "{dataset.directory}"\ndatabase_url = "{database}"\n'
        f'[models]\ntarget = "{dataset.directory / "models" / "target"}"\n'
        f'draft = "{dataset.directory / "models" / "draft"}"\ndevice = "cpu"\n'
        f"[replay]\nwindow = {WINDOW_K}\n"
        f"[drift]\n{drift}"
        '[alerts]\ndefault_receiver = "console"\n',
        encoding="utf-8",
    )


def write_registry(directory: Path) -> None:
    """A head registry whose live pointer names DRAFT_VERSION, the version the results were replayed with
    (what `specwatch evaluate` reads as the live head), and the model directories the config names."""
    for model in ("target", "draft"):
        (directory / "models" / model).mkdir(parents=True, exist_ok=True)
    version_dir = directory / "heads" / "versions" / DRAFT_VERSION
    (version_dir / "draft").mkdir(parents=True, exist_ok=True)
    head = HeadManifest(
        version=DRAFT_VERSION, kind="eagle3", created_at=datetime.now(UTC), source="seed: evalbench", state="live"
    )
    (version_dir / HEAD_FILE).write_text(head.model_dump_json(indent=2) + "\n", encoding="utf-8")
    live = directory / "heads" / "live"
    live.unlink(missing_ok=True)
    live.symlink_to(Path("versions") / DRAFT_VERSION / "draft")


def fresh_storage(dataset: Dataset, admin_url: str) -> None:
    shutil.rmtree(dataset.directory, ignore_errors=True)
    dataset.directory.mkdir(parents=True)
    if dataset.postgres_database:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            name = sql.Identifier(dataset.postgres_database)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))


def drop_storage(dataset: Dataset, admin_url: str) -> None:
    if dataset.postgres_database:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            name = sql.Identifier(dataset.postgres_database)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def generate(dataset: Dataset, checkout: Path, admin_url: str, seed: int, live_share: float) -> dict[str, Any]:
    fresh_storage(dataset, admin_url)
    write_registry(dataset.directory)
    migrate(dataset, checkout, SCHEMA_REVISION)
    anchor = datetime.now(UTC)
    started = time.perf_counter()
    if dataset.backend == "sqlite":
        writer: Writer = SqliteWriter(dataset.directory / "specwatch.db")
    else:
        writer = PostgresWriter(libpq_url(dataset))
    written = write_rows(writer, dataset.results, anchor, seed, live_share)
    seconds = time.perf_counter() - started
    meta = {
        "generator": GENERATOR, "results": dataset.results, "seed": seed, "live_share": live_share,
        "segments": written.pop("segments"), "anchor": anchor.isoformat(), "rows": written,
        "seconds": round(seconds, 1),
    }  # fmt: skip
    dataset.meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"generated {dataset.backend} {size_label(dataset.results)}: {written} in {seconds:.0f} s", flush=True)
    return meta


def scored_count(dataset: Dataset) -> int | None:
    """Scored results in the database; None when it cannot be read."""
    query = "SELECT count(*) FROM replay_results WHERE mode = 'scored'"
    try:
        if dataset.backend == "sqlite":
            path = dataset.directory / "specwatch.db"
            if not path.is_file():
                return None
            with sqlite3.connect(path) as connection:
                return int(connection.execute(query).fetchone()[0])
        with psycopg.connect(libpq_url(dataset), connect_timeout=10) as connection:
            row = connection.execute(query).fetchone()
            return int(row[0]) if row else None
    except (sqlite3.Error, psycopg.Error):
        return None


def reusable(dataset: Dataset, seed: int, live_share: float) -> dict[str, Any] | None:
    if not dataset.meta.is_file():
        return None
    meta = json.loads(dataset.meta.read_text(encoding="utf-8"))
    wanted = {"generator": GENERATOR, "results": dataset.results, "seed": seed, "live_share": live_share}
    if any(meta.get(key) != value for key, value in wanted.items()):
        return None
    return meta if scored_count(dataset) == dataset.results else None


def shift_to_now(dataset: Dataset, meta: dict[str, Any]) -> None:
    """Moves every timestamp the evaluation reads forward by the data's age, so the windows see what they saw."""
    anchor = datetime.now(UTC)
    seconds = int((anchor - datetime.fromisoformat(meta["anchor"])).total_seconds())
    columns = {
        "samples": ("received_at", "occurred_at"),
        "replay_results": ("occurred_at", "replayed_at"),
        "live_results": ("received_at", "occurred_at"),
    }
    started = time.perf_counter()
    if dataset.backend == "sqlite":
        with sqlite3.connect(dataset.directory / "specwatch.db") as connection:
            for table, names in columns.items():
                moved = ", ".join(
                    f"{name} = strftime('%Y-%m-%d %H:%M:%S', {name}, '+{seconds} seconds') || substr({name}, 20)"
                    for name in names
                )
                connection.execute(f"UPDATE {table} SET {moved}")
    else:
        with psycopg.connect(libpq_url(dataset), autocommit=True) as connection:
            for table, names in columns.items():
                moved = ", ".join(f"{name} = {name} + make_interval(secs => {seconds})" for name in names)
                connection.execute(f"UPDATE {table} SET {moved}")
                connection.execute(f"VACUUM (FULL, ANALYZE) {table}")
    meta["anchor"] = (datetime.fromisoformat(meta["anchor"]) + timedelta(seconds=seconds)).isoformat()
    dataset.meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"shifted {dataset.backend} {size_label(dataset.results)} by {seconds / 3600:.1f} h "
          f"in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


def prepare(dataset: Dataset, args: argparse.Namespace, admin_url: str) -> dict[str, Any]:
    """The data set, generated or reused, migrated by the checkout and current."""
    meta = None if args.regenerate else reusable(dataset, args.seed, args.live_share)
    if meta is not None and not migrate(dataset, args.checkout, "head"):
        print(f"{dataset.url} is past the revisions {args.checkout} knows: generating it anew", flush=True)
        meta = None
    if meta is None:
        meta = generate(dataset, args.checkout, admin_url, args.seed, args.live_share)
        migrate(dataset, args.checkout, "head")
    elif datetime.now(UTC) - datetime.fromisoformat(meta["anchor"]) > timedelta(minutes=args.max_age_minutes):
        shift_to_now(dataset, meta)
    write_registry(dataset.directory)
    write_config(dataset, args.input_drift)
    return meta


# -- measuring -----------------------------------------------------------------------------------------


def clear_evaluation_state(dataset: Dataset) -> None:
    """Findings, alerts and notifications of earlier runs gone: each run is a first evaluation."""
    if dataset.backend == "sqlite":
        with sqlite3.connect(dataset.directory / "specwatch.db") as connection:
            for table in EVALUATION_TABLES:
                connection.execute(f"DELETE FROM {table}")
    else:
        with psycopg.connect(libpq_url(dataset)) as connection:
            for table in EVALUATION_TABLES:
                connection.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    shutil.rmtree(dataset.directory / "reports", ignore_errors=True)


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_seconds: float
    peak_mb: float
    summary: str
    """evaluate's first output line: segment windows evaluated, on which counts, findings"""


def run_evaluate(dataset: Dataset, checkout: Path, profile: Path | None = None) -> Run:
    """`python -m monitor evaluate` as a child; its wall time and its peak RSS (ru_maxrss from wait4)."""
    clear_evaluation_state(dataset)
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "monitor"]
    command += ["evaluate", "--config", str(dataset.config)]
    log_path = dataset.directory / "evaluate.log"
    with log_path.open("w") as log, tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        child = subprocess.Popen(
            command, cwd=dataset.directory, env=child_environment(checkout), stdout=output, stderr=log
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        summary = output.readline().strip()
    if child.returncode != 0:
        raise SystemExit(f"evaluate failed ({child.returncode}); see {log_path}:\n{log_path.read_text()[-3000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, summary)


def print_profile(path: Path, lines: int = 25) -> None:
    for order in ("tottime", "cumulative"):
        print(f"\ncProfile, top {lines} by {order} ({path}):")
        pstats.Stats(str(path), stream=sys.stdout).sort_stats(order).print_stats(lines)


def postgres_reachable(admin_url: str) -> bool:
    try:
        with psycopg.connect(admin_url, connect_timeout=5):
            return True
    except psycopg.Error as error:
        print(f"postgresql skipped: {admin_url} does not answer ({error})")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,300k,1M", help="scored results per database (default 100k,300k,1M)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both (the default)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep and reuse the generated data here")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code measured (PYTHONPATH of evaluate)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SPECWATCH_BENCH_POSTGRES_URL", POSTGRES),
        help=f"admin URL of the PostgreSQL server, which gets one database per size (default {POSTGRES})",
    )
    parser.add_argument("--runs", type=int, default=1, help="measured runs per database (default 1)")
    parser.add_argument("--live-share", type=float, default=0.2, help="share of results with live counts (0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regenerate", action="store_true", help="generate the data anew even when it is cached")
    parser.add_argument("--generate-only", action="store_true", help="generate (or check) the data, measure nothing")
    parser.add_argument(
        "--max-age-minutes",
        type=float,
        default=10.0,
        help="cached data older than this has its timestamps shifted to now (default 10)",
    )
    parser.add_argument("--input-drift", action="store_true", help="run the input-drift check (evidently) too")
    parser.add_argument("--profile", action="store_true", help="after the measured runs, one run under cProfile")
    args = parser.parse_args()
    args.checkout = args.checkout.resolve()
    admin_url = args.postgres.replace("postgresql+psycopg://", "postgresql://", 1)
    sizes = [parse_size(size) for size in args.sizes.split(",")]
    backends = [name for name in args.backends.split(",") if name != "postgresql" or postgres_reachable(admin_url)]
    keep = args.data_dir is not None
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="evalbench-"))).resolve()
    tag = hashlib.sha256(str(data_dir).encode()).hexdigest()[:6] if keep else uuid.uuid4().hex[:6]
    datasets = [dataset_for(backend, size, data_dir, admin_url, tag) for backend in backends for size in sizes]
    print(f"checkout {args.checkout}; data {data_dir}{'' if keep else ' (temporary)'}", flush=True)
    runs: list[tuple[Dataset, int, Run]] = []
    try:
        for dataset in datasets:
            segments = prepare(dataset, args, admin_url)["segments"]
            if args.generate_only:
                continue
            for _ in range(args.runs):
                runs.append((dataset, segments, run_evaluate(dataset, args.checkout)))
                run = runs[-1][2]
                print(f"  {dataset.backend} {size_label(dataset.results)}: {run.seconds:.1f} s, {run.cpu_seconds:.1f} "
                      f"cpu s, {run.peak_mb:.0f} MB; {run.summary}", flush=True)  # fmt: skip
            if args.profile:
                profile = dataset.directory / "evaluate.prof"
                run_evaluate(dataset, args.checkout, profile)
                print_profile(profile)
    finally:
        if not keep:
            for dataset in datasets:
                drop_storage(dataset, admin_url)
            shutil.rmtree(data_dir, ignore_errors=True)
    if runs:
        print(f"\n{'backend':10} {'results':>9} {'segments':>8} {'seconds':>8} {'cpu s':>6} {'peak MB':>8}  evaluate")
        for dataset, segments, run in runs:
            print(
                f"{dataset.backend:10} {dataset.results:>9,} {segments:>8} {run.seconds:>8.1f} "
                f"{run.cpu_seconds:>6.1f} {run.peak_mb:>8.0f}  {run.summary}"
            )


if __name__ == "__main__":
    main()
