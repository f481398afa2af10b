"""Replay: claim samples not yet replayed against the live (target, draft) pair, score them,
and store per-sample results — once, even with several workers and crashes.

    claim (oldest first, taking turns across segments; a lease per sample: monitor.replay.claims)
      -> tokenize (the logged token ids where the log has them; else the chat template, a raw
         prompt as is: decoder.exchange) -> scored mode, batched; exact on a hash-chosen fraction
      -> one transaction: results in, leases out

A sample the target's tokenizer cannot read gets a scored result marked skipped with the reason
(the error's type only: its message may quote the text), so it is never claimed again and the rest
of its batch is replayed.

A worker that dies leaves leases that expire after `replay.claim_ttl_s`; its samples are then
claimed again. Results are unique per (sample, draft version, target version, mode), so a
late duplicate is dropped, and a new draft version starts its own set of results.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from decoder import (
    AcceptCounts,
    Draft,
    ExactResult,
    SampleScore,
    TargetModel,
    exact_generate,
    score_batch,
)
from decoder.exchange import Exchange, ExchangeTokens, tokenize_exchange
from monitor.base.config import ReplayConfig
from monitor.base.db import ReplayResult, Sample, utcnow
from monitor.base.results import EXACT, SCORED
from monitor.intake.sampling import key_fraction
from monitor.replay.claims import ClaimQueue, Versions, id_chunks

log = logging.getLogger(__name__)
default_tracer = trace.get_tracer(__name__)  # no-op until a TracerProvider is installed globally


@dataclass(frozen=True)
class ClaimedSample:
    id: int
    sample_key: str
    segment: str
    occurred_at: datetime
    messages: list[dict[str, str]]
    completion: str
    temperature: float
    raw_prompt: bool = False
    finish_reason: str | None = None
    max_tokens: int | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None

    @property
    def exchange(self) -> Exchange:
        return Exchange.of(self)

    @classmethod
    def from_row(cls, row: Sample) -> ClaimedSample:
        return cls(
            id=row.id,
            sample_key=row.sample_key,
            segment=row.segment,
            occurred_at=row.occurred_at,
            messages=row.messages,
            completion=row.completion,
            temperature=row.temperature or 0.0,
            raw_prompt=row.raw_prompt,
            finish_reason=row.finish_reason,
            max_tokens=row.max_tokens,
            prompt_token_ids=row.prompt_token_ids,
            completion_token_ids=row.completion_token_ids,
        )


@dataclass
class ReplayReport:
    claimed: int = 0
    stored: int = 0
    skipped: int = 0
    exact: int = 0
    seconds: float = 0.0
    tokens: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    """the result rows this round wrote (one round only; replay_all keeps none)"""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _upsert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


class Replayer:
    """One replay worker over a shared database."""

    def __init__(
        self,
        engine: Engine,
        target: TargetModel,
        draft: Draft,
        versions: Versions,
        config: ReplayConfig,
        worker: str | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.engine = engine
        self.target = target
        self.draft = draft
        self.versions = versions
        self.config = config
        self.worker = worker or worker_name()
        self.tracer = tracer or default_tracer
        self._insert = _upsert(engine)

    def queue(self) -> ClaimQueue:
        """This worker's claims on the backlog of the live versions."""
        return ClaimQueue(self.engine, self.versions.draft, self.versions.target, self.config.claim_ttl_s, self.worker)

    def pending(self) -> int:
        """Samples with no scored result for the live versions (the replay backlog)."""
        return self.queue().pending()

    def claim(self, limit: int | None = None) -> list[ClaimedSample]:
        """Lease up to `limit` unreplayed samples: oldest first, taking turns across segments."""
        return self._load(self.queue().claim(limit or self.config.samples_per_round))

    def _load(self, sample_ids: list[int]) -> list[ClaimedSample]:
        """The samples, oldest first."""
        with Session(self.engine) as session:
            rows = [
                row
                for chunk in id_chunks(sample_ids)
                for row in session.scalars(select(Sample).where(Sample.id.in_(chunk)))
            ]
            return [ClaimedSample.from_row(row) for row in sorted(rows, key=lambda row: (row.occurred_at, row.id))]

    def _span(self, name: str, samples: int, mode: str) -> AbstractContextManager[trace.Span]:
        attributes: dict[str, int | str] = {"samples": samples, "mode": mode, "draft_version": self.versions.draft}
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def replay_once(self) -> ReplayReport:
        """Claim one round of samples, replay them, store the results."""
        with self._span("replay.round", 0, SCORED) as span:
            report = self._replay_round()
            span.set_attributes({"samples": report.claimed, "tokens": report.tokens, "exact": report.exact})
            return report

    def _replay_round(self) -> ReplayReport:
        started = time.perf_counter()
        claimed = self.claim()
        report = ReplayReport(claimed=len(claimed))
        if not claimed:
            return report
        readable, unreadable = self._tokenize_all(claimed)
        rows = self._scored_rows(readable) + self._unreadable_rows(unreadable)
        rows += self._exact_rows(readable)
        self._store(claimed, rows)
        report.rows = rows
        report.stored = sum(1 for row in rows if row["mode"] == SCORED)
        report.exact = sum(1 for row in rows if row["mode"] == EXACT)
        report.skipped = sum(1 for row in rows if row["skipped"])
        report.tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows if row["mode"] == SCORED)
        report.seconds = time.perf_counter() - started
        log.info(
            "replayed %d samples (%d exact, %d skipped) in %.2fs",
            report.stored,
            report.exact,
            report.skipped,
            report.seconds,
        )
        return report

    def replay_all(self, max_rounds: int | None = None) -> ReplayReport:
        """Rounds until nothing is left to claim (or `max_rounds`)."""
        total = ReplayReport()
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            report = self.replay_once()
            if not report.claimed:
                break
            for name in ("claimed", "stored", "skipped", "exact", "tokens"):
                setattr(total, name, getattr(total, name) + getattr(report, name))
            total.seconds += report.seconds
            rounds += 1
        return total

    def tokenize(self, sample: ClaimedSample) -> ExchangeTokens:
        """The sample's tokens by decoder.exchange's rule: logged ids first, a natural stop ends
        with EOS, a cut completion has its own length as cap."""
        return tokenize_exchange(self.target, sample.exchange)

    def _tokenize_all(
        self, claimed: Sequence[ClaimedSample]
    ) -> tuple[list[tuple[ClaimedSample, ExchangeTokens]], list[tuple[ClaimedSample, str]]]:
        """(sample, tokens) for each sample the tokenizer reads; (sample, reason) for the others."""
        readable, unreadable = [], []
        for sample in claimed:
            try:
                readable.append((sample, self.tokenize(sample)))
            except Exception as error:  # the tokenizer's errors have no common type (TypeError on a lone surrogate)
                reason = f"cannot tokenize: {type(error).__name__}"
                log.warning("sample %d skipped: %s", sample.id, reason)
                unreadable.append((sample, reason))
        return readable, unreadable

    def _unreadable_rows(self, unreadable: Sequence[tuple[ClaimedSample, str]]) -> list[dict[str, Any]]:
        return [
            self._scored_row(
                sample,
                SampleScore(sample_id=str(sample.id), counts=AcceptCounts(), skipped=reason),
                sample.temperature,
                None,
            )
            for sample, reason in unreadable
        ]

    def _scored_rows(self, readable: Sequence[tuple[ClaimedSample, ExchangeTokens]]) -> list[dict[str, Any]]:
        by_temperature: dict[float, list[tuple[ClaimedSample, ExchangeTokens]]] = defaultdict(list)
        for sample, tokens in readable:
            by_temperature[sample.temperature].append((sample, tokens))
        rows: list[dict[str, Any]] = []
        for temperature, pairs in by_temperature.items():
            tokenized = [tokens.sample(str(sample.id)) for sample, tokens in pairs]
            with self._span("replay.scored_batch", len(pairs), SCORED) as span:
                span.set_attribute("tokens", sum(sample.num_tokens for sample in tokenized))
                scores = score_batch(
                    self.target,
                    self.draft,
                    tokenized,
                    window=self.config.window,
                    temperature=temperature,
                    batch_size=self.config.batch_size,
                    max_batch_tokens=self.config.max_batch_tokens,
                    pack=self.config.pack_samples,
                )
            rows.extend(
                self._scored_row(sample, score, temperature, tokens)
                for (sample, tokens), score in zip(pairs, scores, strict=True)
            )
        return rows

    def _scored_row(
        self, sample: ClaimedSample, score: SampleScore, temperature: float, tokens: ExchangeTokens | None
    ) -> dict[str, Any]:
        return self._row(
            sample,
            SCORED,
            temperature,
            tokens,
            counts=score.counts.to_dict(),
            outcomes=[round(value, 4) for value in score.first_proposal_acceptance],
            target_agreement=score.target_agreement,
            prompt_tokens=score.prompt_tokens,
            completion_tokens=score.completion_tokens,
            truncated_tokens=score.truncated_tokens,
            skipped=score.skipped,
            seconds=score.seconds,
            speedup=None,
        )

    def _exact_rows(self, readable: Sequence[tuple[ClaimedSample, ExchangeTokens]]) -> list[dict[str, Any]]:
        chosen = [
            (sample, tokens)
            for sample, tokens in readable
            if key_fraction("exact:" + sample.sample_key) < self.config.exact_fraction
        ]
        if not chosen:
            return []
        with self._span("replay.exact_batch", len(chosen), EXACT) as span:
            rows = [self._exact_replay(sample, tokens) for sample, tokens in chosen]
            span.set_attribute("tokens", sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows))
        return rows

    def _exact_replay(self, sample: ClaimedSample, tokens: ExchangeTokens) -> dict[str, Any]:
        """The prompt the engine read (its logged ids where usable), generated anew under the
        request's cap (at most `exact_max_new_tokens`)."""
        cap = self.config.exact_max_new_tokens
        result = exact_generate(
            self.target,
            self.draft,
            tokens.prompt_ids,
            window=self.config.window,
            max_new_tokens=min(cap, sample.max_tokens or cap),
            temperature=sample.temperature,
            seed=sample.id,
        )
        return self._exact_row(sample, result, tokens)

    def _exact_row(self, sample: ClaimedSample, result: ExactResult, tokens: ExchangeTokens) -> dict[str, Any]:
        generation = result.speculative
        return self._row(
            sample,
            EXACT,
            sample.temperature,
            tokens,
            counts=result.counts.to_dict(),
            outcomes=[],
            target_agreement=None,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=len(result.tokens),
            truncated_tokens=generation.truncated_prompt_tokens,
            skipped=None if result.tokens else "generated nothing",
            seconds=generation.seconds,
            speedup=result.speedup,
        )

    def _row(
        self, sample: ClaimedSample, mode: str, temperature: float, tokens: ExchangeTokens | None, **fields: Any
    ) -> dict[str, Any]:
        counts = fields["counts"]
        return {
            "token_source": tokens.source if tokens is not None else None,
            "retokenized_equal": tokens.retokenized_equal if tokens is not None else None,
            "sample_id": sample.id,
            "segment": sample.segment,
            "occurred_at": sample.occurred_at,
            "replayed_at": utcnow(),
            "draft_version": self.versions.draft,
            "target_version": self.versions.target,
            "mode": mode,
            "window": self.config.window,
            "temperature": temperature,
            "accepted": counts["accepted"],
            "rejected": counts["rejected"],
            "drafted": counts["drafted"],
            "steps": counts["steps"],
            "worker": self.worker,
            **fields,
        }

    def _store(self, claimed: Sequence[ClaimedSample], rows: list[dict[str, Any]]) -> None:
        """Results in and leases out, in one transaction: a crash before it leaves no trace."""
        with Session(self.engine) as session, session.begin():
            statement = self._insert(ReplayResult).on_conflict_do_nothing(
                index_elements=["sample_id", "draft_version", "target_version", "mode"]
            )
            session.execute(statement, rows)
            self.queue().release(session, [sample.id for sample in claimed])
