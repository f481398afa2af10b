"""The retrain corpus: stored (already redacted) samples of the last N days, deduplicated, split
into train and holdout by sample, weighted toward segments whose acceptance is low.

    corpus = build_corpus(engine, config.retrain.corpus, out_dir=work / "corpus",
                          segment_alpha={"tenant=h:1f2e/lang=zh": 0.41}, drift=config.drift,
                          seed=0, now=utcnow(), target=target)
    corpus = load_corpus(work / "corpus")          # verifies the content hash
    for sample in corpus.training_samples(): ...   # low-alpha segments repeated

Steps, in order:

1. window: samples with occurred_at in [now - days, now];
2. dedup: samples whose normalized (messages, completion) are equal count once; the oldest stays;
3. quota (only when more than `max_samples` remain): per-segment quotas proportional to
   count x weight, capped at what a segment has; within a segment a seeded hash picks which;
4. split by sample: a seeded hash of the sample key sends `holdout_fraction` of them to the
   holdout. Dedup came first, so no content sits on both sides;
5. optionally the train responses become the target's own greedy answers (as Medusa, EAGLE and
   SpecForge train); the holdout keeps the logged completions, since it measures real traffic.

A segment's weight is 1 when its alpha is at or above its threshold (`DriftConfig.threshold_for`, the
one the alerts use; or unknown) and rises
linearly to `low_alpha_weight` as alpha falls to 0; a roll-up holding the segment (`lang=zh`, alphas
given for roll-ups as for segments) lends it its weight when that is higher. Train samples of a segment appear
round(weight) times in `training_samples()`; the holdout is never repeated or reweighted.

Layout of out_dir: train.jsonl and holdout.jsonl (one sample per line) and manifest.json (a
`CorpusManifest`), each written atomically, the manifest last and only after removing the old
one; `load_corpus` refuses a directory whose files do not match the manifest's hashes, so a crash
mid-build never yields a corpus. Samples are personal data: only counts are logged, never text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, select

from decoder.exchange import Exchange
from decoder.files import write_atomically
from decoder.target import TargetModel
from monitor.base.config import CorpusConfig, DriftConfig
from monitor.base.db import Sample, as_utc
from monitor.base.groups import ALL_SEGMENTS, contains

log = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
HOLDOUT_FILE = "holdout.jsonl"
MANIFEST_FILE = "manifest.json"
FETCH_CHUNK = 500
SCAN_BATCH = 1000
GENERATION_BATCH = 32


class CorpusError(Exception):
    """No usable corpus: no samples in the window, or a directory that is not a whole corpus."""


@dataclass(frozen=True)
class CorpusSample:
    """One stored sample as the corpus holds it (a line of train.jsonl or holdout.jsonl)."""

    sample_id: int
    sample_key: str
    segment: str
    language: str
    occurred_at: datetime
    messages: list[dict[str, str]]
    completion: str
    raw_prompt: bool = False
    finish_reason: str | None = None
    max_tokens: int | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None

    @property
    def exchange(self) -> Exchange:
        """The sample as replay reads it, so training and the gate tokenize it the same way."""
        return Exchange.of(self)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "occurred_at": as_utc(self.occurred_at).isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CorpusSample:
        return cls(**{**data, "occurred_at": as_utc(datetime.fromisoformat(data["occurred_at"]))})


class SegmentCounts(BaseModel):
    train: int = Field(ge=0, description="training samples of the segment (before repetition)")
    holdout: int = Field(ge=0, description="holdout samples of the segment")


class CorpusManifest(BaseModel):
    """manifest.json of a corpus directory."""

    format: Literal["specwatch-corpus"] = Field(default="specwatch-corpus", description="file format marker")
    format_version: int = Field(default=1, ge=1, le=1, description="version of this file format")
    content_hash: str = Field(min_length=64, max_length=64, description="sha256 over both sample files")
    files: dict[str, str] = Field(description="sha256 of each sample file")
    created_at: datetime = Field(description="when the corpus was built")
    since: datetime = Field(description="occurred_at of the oldest sample in the corpus")
    until: datetime = Field(description="occurred_at of the newest sample in the corpus")
    window_days: int = Field(ge=1, description="the samples came from this many days before created_at")
    counts: dict[str, SegmentCounts] = Field(description="samples per segment and side")
    weights: dict[str, float] = Field(description="training weight per segment (>= 1)")
    segment_alpha: dict[str, float] = Field(description="the alpha each weight came from, where known")
    threshold: float = Field(description="the default alpha at or above which a segment has weight 1")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="each segment's threshold (the default or its override)"
    )
    available: int = Field(ge=0, description="distinct samples in the window, before the max_samples cap")
    duplicates_dropped: int = Field(ge=0, description="samples dropped as content duplicates of older ones")
    regenerated: bool = Field(description="train responses are the target's own greedy answers")
    seed: int = Field(ge=0, description="seed of the split and of the per-segment selection")
    holdout_fraction: float = Field(gt=0, lt=1, description="share of samples sent to the holdout")

    @property
    def train_count(self) -> int:
        return sum(counts.train for counts in self.counts.values())

    @property
    def holdout_count(self) -> int:
        return sum(counts.holdout for counts in self.counts.values())


@dataclass
class Corpus:
    """A built or loaded corpus: its manifest and both sides, ordered by occurred_at."""

    directory: Path
    manifest: CorpusManifest
    train: list[CorpusSample]
    holdout: list[CorpusSample]

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    def repeats(self, sample: CorpusSample) -> int:
        """How often a train sample appears in the training stream: its segment's weight,
        rounded half up."""
        return max(1, int(self.manifest.weights.get(sample.segment, 1.0) + 0.5))

    def training_samples(self) -> list[CorpusSample]:
        """The train side with low-alpha segments repeated, as passes over the train list (the
        second pass holds the samples repeated at least twice, and so on), so copies of one
        sample are never adjacent."""
        passes = max((self.repeats(sample) for sample in self.train), default=0)
        return [sample for index in range(passes) for sample in self.train if self.repeats(sample) > index]


@dataclass(frozen=True)
class _Candidate:
    """A distinct sample found by the window scan (its text stays in the database)."""

    sample_id: int
    sample_key: str
    segment: str


def segment_weight(alpha: float | None, threshold: float, low_alpha_weight: float) -> float:
    """1 at or above the threshold (or when alpha is unknown), rising linearly to
    `low_alpha_weight` as alpha falls to 0."""
    if alpha is None or threshold <= 0 or alpha >= threshold:
        return 1.0
    shortfall = (threshold - max(0.0, alpha)) / threshold
    return 1.0 + (low_alpha_weight - 1.0) * shortfall


def group_weight(
    segment: str, alphas: Mapping[str, float], thresholds: Mapping[str, float], low_alpha_weight: float
) -> float:
    """A segment's weight: the highest of its own and of every roll-up holding it (`lang=zh` low across
    tenants weighs each tenant's Chinese samples, even where the segment alone is too small to tell)."""
    groups = [group for group in alphas if contains(group, segment)]
    own = segment_weight(None, thresholds[segment], low_alpha_weight)
    return max([own, *(segment_weight(alphas[g], thresholds[g], low_alpha_weight) for g in groups)])


def allocate_quotas(available: Mapping[str, int], weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Per-segment sample counts summing to min(total, all available): proportional to
    available x weight, capped at what a segment has (the cap's surplus goes to the others)."""
    if sum(available.values()) <= total:
        return dict(available)
    quotas = {segment: 0 for segment in available}
    remaining = total
    open_segments = {segment for segment, count in available.items() if count > 0}
    while open_segments:
        mass = sum(available[s] * weights.get(s, 1.0) for s in open_segments)
        shares = {s: remaining * available[s] * weights.get(s, 1.0) / mass for s in open_segments}
        capped = {s for s in open_segments if shares[s] >= available[s]}
        if not capped:
            quotas.update(_largest_remainder(shares, remaining))
            break
        for segment in capped:
            quotas[segment] = available[segment]
            remaining -= available[segment]
        open_segments -= capped
    return quotas


def _largest_remainder(shares: Mapping[str, float], total: int) -> dict[str, int]:
    quotas = {segment: int(share) for segment, share in shares.items()}
    leftover = total - sum(quotas.values())
    by_remainder = sorted(shares, key=lambda s: (-(shares[s] - quotas[s]), s))
    for segment in by_remainder[:leftover]:
        quotas[segment] += 1
    return quotas


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_key(messages: Sequence[Mapping[str, Any]], completion: str) -> str:
    """Equal for exchanges that differ only in whitespace, Unicode normal form or role case."""
    turns = [[str(m.get("role", "")).strip().lower(), _normalized(str(m.get("content", "")))] for m in messages]
    payload = json.dumps([turns, _normalized(completion)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _unit_hash(purpose: str, seed: int, sample_key: str) -> float:
    """A number in [0, 1) fixed by (purpose, seed, key): independent draws per purpose."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{sample_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(sample_key: str, seed: int, holdout_fraction: float) -> bool:
    return _unit_hash("holdout", seed, sample_key) < holdout_fraction


def _scan_window(engine: Engine, since: datetime, until: datetime) -> tuple[list[_Candidate], int]:
    """Distinct samples in [since, until], oldest first, and how many duplicates were dropped."""
    query = (
        select(Sample.id, Sample.sample_key, Sample.segment, Sample.messages, Sample.completion)
        .where(Sample.occurred_at >= since, Sample.occurred_at <= until)
        .order_by(Sample.occurred_at, Sample.id)
    )
    seen: set[str] = set()
    candidates: list[_Candidate] = []
    duplicates = 0
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=SCAN_BATCH).execute(query):
            key = content_key(row.messages, row.completion)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            candidates.append(_Candidate(row.id, row.sample_key, row.segment))
    return candidates, duplicates


def _select(candidates: list[_Candidate], quotas: Mapping[str, int], seed: int) -> list[_Candidate]:
    by_segment: dict[str, list[_Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_segment[candidate.segment].append(candidate)
    chosen: list[_Candidate] = []
    for segment, members in by_segment.items():
        members.sort(key=lambda c: _unit_hash("select", seed, c.sample_key))
        chosen.extend(members[: quotas.get(segment, 0)])
    return chosen


def _fetch(engine: Engine, ids: Sequence[int]) -> list[CorpusSample]:
    samples: list[CorpusSample] = []
    with engine.connect() as connection:
        for start in range(0, len(ids), FETCH_CHUNK):
            query = select(Sample).where(Sample.id.in_(ids[start : start + FETCH_CHUNK]))
            for row in connection.execute(query):
                samples.append(_from_row(row))
    samples.sort(key=lambda s: (s.occurred_at, s.sample_id))
    return samples


def _from_row(row: Any) -> CorpusSample:
    return CorpusSample(
        sample_id=int(row.id),
        sample_key=row.sample_key,
        segment=row.segment,
        language=row.language,
        occurred_at=as_utc(row.occurred_at),
        messages=[{"role": m["role"], "content": m["content"]} for m in row.messages],
        completion=row.completion,
        raw_prompt=bool(row.raw_prompt),
        finish_reason=row.finish_reason,
        max_tokens=row.max_tokens,
        prompt_token_ids=row.prompt_token_ids,
        completion_token_ids=row.completion_token_ids,
    )


def regenerate_responses(
    samples: Sequence[CorpusSample], target: TargetModel, max_new_tokens: int, batch_size: int = GENERATION_BATCH
) -> list[CorpusSample]:
    """The samples with each completion replaced by the target's greedy answer to its messages
    (TargetModel.greedy_answers); the logged ids and finish reason belong to the old completion and go."""
    texts = target.greedy_answers([sample.messages for sample in samples], max_new_tokens, batch_size=batch_size)
    return [
        replace(sample, completion=text, finish_reason=None, completion_token_ids=None)
        for sample, text in zip(samples, texts, strict=True)
    ]


def build_corpus(
    engine: Engine,
    config: CorpusConfig,
    *,
    out_dir: Path,
    segment_alpha: Mapping[str, float],
    drift: DriftConfig,
    seed: int,
    now: datetime,
    target: TargetModel | None = None,
) -> Corpus:
    """Builds the corpus from the database into `out_dir` (see the module docstring).
    Raises CorpusError when the window holds no samples, or too few to fill both sides."""
    until = as_utc(now)
    since = until - timedelta(days=config.days)
    candidates, duplicates = _scan_window(engine, since, until)
    if not candidates:
        raise CorpusError(f"no samples in the last {config.days} days (since {since.isoformat()}); nothing to train on")
    available = Counter(candidate.segment for candidate in candidates)
    alphas = {
        group: alpha
        for group, alpha in segment_alpha.items()
        if group != ALL_SEGMENTS and any(contains(group, segment) for segment in available)
    }
    thresholds = {group: drift.threshold_for(group)[0] for group in [*available, *alphas]}
    weights = {segment: group_weight(segment, alphas, thresholds, config.low_alpha_weight) for segment in available}
    chosen = _select(candidates, allocate_quotas(available, weights, config.max_samples), seed)
    samples = _fetch(engine, [candidate.sample_id for candidate in chosen])
    train = [s for s in samples if not in_holdout(s.sample_key, seed, config.holdout_fraction)]
    holdout = [s for s in samples if in_holdout(s.sample_key, seed, config.holdout_fraction)]
    if not train or not holdout:
        raise CorpusError(
            f"{len(samples)} distinct samples in the last {config.days} days are too few to fill both "
            f"train and holdout (holdout_fraction {config.holdout_fraction})"
        )
    regenerate = config.regenerate_responses and target is not None
    if config.regenerate_responses and target is None:
        log.warning("corpus.regenerate_responses is set but no target was given; keeping the logged responses")
    if regenerate and target is not None and train:
        train = regenerate_responses(train, target, config.max_new_tokens)
    manifest_fields = {
        "created_at": until,
        "window_days": config.days,
        "weights": {s: round(w, 6) for s, w in sorted(weights.items())},
        "segment_alpha": dict(sorted(alphas.items())),
        "threshold": drift.threshold,
        "thresholds": dict(sorted(thresholds.items())),
        "available": len(candidates),
        "duplicates_dropped": duplicates,
        "regenerated": regenerate,
        "seed": seed,
        "holdout_fraction": config.holdout_fraction,
    }
    corpus = write_corpus(out_dir, train, holdout, manifest_fields)
    _log_summary(corpus)
    return corpus


def _log_summary(corpus: Corpus) -> None:
    manifest = corpus.manifest
    log.info(
        "corpus %s: %d train, %d holdout samples in %d segments (%d available, %d duplicates dropped%s)",
        manifest.content_hash[:12],
        manifest.train_count,
        manifest.holdout_count,
        len(manifest.counts),
        manifest.available,
        manifest.duplicates_dropped,
        ", responses regenerated" if manifest.regenerated else "",
    )


def _jsonl(samples: Sequence[CorpusSample]) -> bytes:
    lines = (json.dumps(s.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for s in samples)
    return "".join(lines).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_hash(files: Mapping[str, str]) -> str:
    """sha256 over the named files' own hashes: moving a sample between files changes it."""
    text = "".join(f"{name}:{files[name]}\n" for name in (TRAIN_FILE, HOLDOUT_FILE))
    return _sha256(text.encode("utf-8"))


def _segment_counts(train: Sequence[CorpusSample], holdout: Sequence[CorpusSample]) -> dict[str, SegmentCounts]:
    train_counts = Counter(s.segment for s in train)
    holdout_counts = Counter(s.segment for s in holdout)
    segments = sorted(set(train_counts) | set(holdout_counts))
    return {s: SegmentCounts(train=train_counts[s], holdout=holdout_counts[s]) for s in segments}


def write_corpus(
    out_dir: Path, train: Sequence[CorpusSample], holdout: Sequence[CorpusSample], manifest_fields: Mapping[str, Any]
) -> Corpus:
    """Writes both sample files, then the manifest (after removing any old one), each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    contents = {TRAIN_FILE: _jsonl(train), HOLDOUT_FILE: _jsonl(holdout)}
    files = {name: _sha256(data) for name, data in contents.items()}
    everything = [*train, *holdout]
    manifest = CorpusManifest.model_validate(
        {
            **manifest_fields,
            "content_hash": corpus_hash(files),
            "files": files,
            "since": min(s.occurred_at for s in everything),
            "until": max(s.occurred_at for s in everything),
            "counts": _segment_counts(train, holdout),
        }
    )
    for name, data in contents.items():
        write_atomically(out_dir / name, data)
    write_atomically(out_dir / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode("utf-8"))
    return Corpus(directory=out_dir, manifest=manifest, train=list(train), holdout=list(holdout))


def load_corpus(directory: Path) -> Corpus:
    """Reads a corpus directory, refusing (CorpusError) one whose manifest is missing or whose
    files do not match the manifest's hashes and counts."""
    manifest = _read_manifest(directory)
    sides: dict[str, list[CorpusSample]] = {}
    for name in (TRAIN_FILE, HOLDOUT_FILE):
        path = directory / name
        if not path.is_file():
            raise CorpusError(f"{directory} is not a whole corpus: {name} is missing")
        data = path.read_bytes()
        if _sha256(data) != manifest.files.get(name):
            raise CorpusError(f"{path} does not match the manifest's hash (an interrupted build?); rebuild the corpus")
        sides[name] = list(_parse_lines(data, path))
    if corpus_hash(manifest.files) != manifest.content_hash:
        raise CorpusError(f"{directory / MANIFEST_FILE} has an inconsistent content hash")
    if _segment_counts(sides[TRAIN_FILE], sides[HOLDOUT_FILE]) != manifest.counts:
        raise CorpusError(f"{directory} sample counts differ from its manifest")
    return Corpus(directory=directory, manifest=manifest, train=sides[TRAIN_FILE], holdout=sides[HOLDOUT_FILE])


def _read_manifest(directory: Path) -> CorpusManifest:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CorpusError(f"{directory} holds no corpus ({MANIFEST_FILE} is missing)")
    try:
        return CorpusManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise CorpusError(f"{path} is not a corpus manifest: {exc.error_count()} invalid fields") from None


def _parse_lines(data: bytes, path: Path) -> Iterator[CorpusSample]:
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            yield CorpusSample.from_json(json.loads(line))
        except (ValueError, TypeError, KeyError):
            raise CorpusError(f"{path} line {number} is not a corpus sample") from None
