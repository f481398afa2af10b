"""Replay on the tiny reference models, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts, TargetModel, exact_generate, score_batch
from decoder.reference.corpus import code_documents, dialog_documents, split
from monitor.base.config import Config, ModelsConfig, ReplayConfig, Secret
from monitor.base.db import ReplayClaim, ReplayResult, Sample, utcnow
from monitor.base.results import EXACT, SCORED, load_results
from monitor.base.stats import segment_stats
from monitor.evaluation.status import render_table, segment_statuses
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.live_models import LiveModels, ModelsUnavailable, load_live_models
from monitor.replay.replayer import ClaimedSample, Replayer, Versions
from monitor.service.demo_traffic import START, traffic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def live(reference_models: Path) -> LiveModels:
    return load_live_models(
        ModelsConfig(target=reference_models / "target", draft=reference_models / "drafts" / "eagle", device="cpu")
    )


def ingest(config: Config, engine: Engine, count: int, seed: int = 0, recent: bool = False) -> None:
    start = utcnow() - timedelta(hours=1) if recent else START
    mix = {"en": 0.4, "zh": 0.3, "code": 0.3}
    records = [
        RawRecord(position=f"item {i}", value=value)
        for i, value in enumerate(traffic(count, mix, seed=seed, start=start, spacing_s=60))
    ]
    IntakePipeline(config, engine, Secret("salt")).ingest("test", records)


def results(engine: Engine, mode: str = SCORED) -> list[ReplayResult]:
    with Session(engine) as session:
        return list(
            session.scalars(select(ReplayResult).where(ReplayResult.mode == mode).order_by(ReplayResult.sample_id))
        )


def replayer(engine: Engine, live: LiveModels, **settings: object) -> Replayer:
    config = ReplayConfig(**{"samples_per_round": 8, "exact_fraction": 0.0, **settings})  # type: ignore[arg-type]
    return Replayer(engine, live.target, live.draft, live.versions, config)


def test_scored_results_match_the_decoder(config: Config, engine: Engine, live: LiveModels) -> None:
    ingest(config, engine, 12)
    worker = replayer(engine, live)
    assert worker.pending() == 12
    report = worker.replay_all()
    assert (report.claimed, report.stored) == (12, 12)
    assert worker.pending() == 0
    stored = results(engine)
    with Session(engine) as session:
        samples = {s.id: s for s in session.scalars(select(Sample))}
    tokenized = [
        worker.tokenize(ClaimedSample.from_row(samples[row.sample_id])).sample(str(row.sample_id)) for row in stored
    ]
    direct = score_batch(live.target, live.draft, tokenized, window=4)
    for row, score in zip(stored, direct, strict=True):
        assert AcceptCounts.from_dict(row.counts) == score.counts
        assert (row.accepted, row.drafted) == (score.counts.accepted, score.counts.drafted)
        assert row.draft_version == live.versions.draft and row.target_version == live.versions.target
        assert len(row.outcomes) == row.completion_tokens
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ReplayClaim)) == 0


def test_exact_fraction_stores_exact_results_with_speedup(config: Config, engine: Engine, live: LiveModels) -> None:
    ingest(config, engine, 3)
    replayer(engine, live, exact_fraction=1.0, exact_max_new_tokens=8).replay_all()
    exact = results(engine, EXACT)
    assert len(exact) == 3
    assert all(row.speedup is not None and row.speedup > 0 for row in exact)
    assert all(row.steps >= 1 for row in exact)


def test_new_draft_version_keeps_results_apart(config: Config, engine: Engine, live: LiveModels) -> None:
    ingest(config, engine, 4)
    replayer(engine, live).replay_all()
    retrained = LiveModels(live.target, live.draft, Versions(live.versions.target, "retrained-head-v2"))
    worker = replayer(engine, retrained)
    assert worker.pending() == 4
    worker.replay_all()
    versions = [row.draft_version for row in results(engine)]
    assert versions.count(live.versions.draft) == 4 and versions.count("retrained-head-v2") == 4


def test_claims_take_turns_across_segments(config: Config, engine: Engine, live: LiveModels) -> None:
    ingest(config, engine, 30)
    claimed = replayer(engine, live).claim(limit=6)
    assert len({sample.segment for sample in claimed}) == 6


def test_expired_claims_go_back_to_the_pool(config: Config, engine: Engine, live: LiveModels) -> None:
    ingest(config, engine, 4)
    dead = replayer(engine, live, claim_ttl_s=0.5)
    assert len(dead.claim()) == 4
    other = replayer(engine, live)
    other.worker = "other-worker"
    assert other.claim() == []
    time.sleep(0.6)
    assert other.replay_all().stored == 4
    assert {row.worker for row in results(engine)} == {"other-worker"}


def test_missing_model_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelsUnavailable, match=r"models\.target = .*nope: no such directory"):
        load_live_models(ModelsConfig(target=tmp_path / "nope", draft=tmp_path))


def write_config(tmp_path: Path, database_url: str, reference: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        f'[models]\ntarget = "{reference / "target"}"\ndraft = "{reference / "drafts" / "eagle"}"\ndevice = "cpu"\n'
        "[replay]\nsamples_per_round = 4\nexact_fraction = 0.0\nclaim_ttl_s = 2.0\n"
    )
    return path


def replay_process(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "replay", "--once", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def counts_by_sample(engine: Engine) -> dict[int, str]:
    return {row.sample_id: json.dumps(row.counts, sort_keys=True) for row in results(engine)}


@pytest.mark.slow
def test_two_workers_share_the_store_without_doubling(
    tmp_path: Path, config: Config, engine: Engine, reference_models: Path, live: LiveModels, database_url: str
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("several workers need PostgreSQL; SQLite runs one worker")
    ingest(config, engine, 40, seed=5)
    workers = [replay_process(write_config(tmp_path, database_url, reference_models, f"w{i}")) for i in range(2)]
    for process in workers:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    rows = results(engine)
    assert len(rows) == 40 == len({row.sample_id for row in rows})
    # how the work splits depends on start-up timing (on a loaded machine one worker may take it all)
    two_workers = counts_by_sample(engine)
    with engine.begin() as connection:
        connection.execute(ReplayResult.__table__.delete())
    replayer(engine, live).replay_all()
    assert counts_by_sample(engine) == two_workers


@pytest.mark.slow
def test_sigkill_mid_batch_leaves_no_half_results(
    tmp_path: Path, config: Config, engine: Engine, reference_models: Path, database_url: str
) -> None:
    ingest(config, engine, 40, seed=9)
    config_path = write_config(tmp_path, database_url, reference_models, "crash")
    process = replay_process(config_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(results(engine)) < 4:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = len(results(engine))
    assert 0 < stored < 40 and stored % 4 == 0, "results are written a whole round at a time"
    time.sleep(2.1)
    final = replay_process(config_path)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    rows = results(engine)
    assert len(rows) == 40 == len({row.sample_id for row in rows})


@pytest.mark.slow
def test_follow_replays_evaluates_and_serves_metrics_until_sigterm(
    tmp_path: Path, config: Config, engine: Engine, reference_models: Path, database_url: str
) -> None:
    import urllib.request

    ingest(config, engine, 12, seed=4, recent=True)
    path = write_config(tmp_path, database_url, reference_models, "follow")
    path.write_text(path.read_text() + "interval_s = 0.2\nevaluate_interval_s = 0.5\n[metrics]\nport = 0\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "replay", "--follow", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("metrics on "), banner + (process.stderr.read() if process.poll() else "")
        url = banner.split()[-1]
        deadline = time.monotonic() + 120
        page = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as reply:
                page = reply.read().decode()
            if 'specwatch_samples_replayed_total{mode="scored"} 12.0' in page and "specwatch_alpha{" in page:
                break
            time.sleep(0.5)
        assert 'specwatch_samples_replayed_total{mode="scored"} 12.0' in page
        assert 'specwatch_alpha{group="all",segment="*",source="shadow",window="24h"}' in page
        assert "specwatch_replay_pending_samples 0.0" in page
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(results(engine)) == 12


def store_unreadable_sample(engine: Engine) -> int:
    """A sample as intake stored them before it refused lone surrogates: the JSON column holds the
    escaped surrogate, and the tokenizer raises TypeError on it."""
    moment = utcnow() - timedelta(days=400)
    sample = Sample(
        sample_key="f" * 64,
        received_at=moment,
        occurred_at=moment,
        segment="lang=en",
        language="en",
        source="test",
        messages=[{"role": "user", "content": "broken \ud800 text"}],
        completion="an answer",
        attributes={},
        redactions={},
        prompt_chars=13,
        completion_chars=9,
    )
    with Session(engine) as session, session.begin():
        session.add(sample)
        session.flush()
        return sample.id


def test_a_sample_the_tokenizer_cannot_read_is_skipped_and_its_batch_replayed(
    config: Config, engine: Engine, live: LiveModels
) -> None:
    ingest(config, engine, 5)
    unreadable = store_unreadable_sample(engine)
    worker = replayer(engine, live, exact_fraction=1.0, exact_max_new_tokens=4)
    report = worker.replay_all()
    assert (report.claimed, report.stored, report.skipped) == (6, 6, 1)
    assert worker.pending() == 0
    skipped = {row.sample_id: row.skipped for row in results(engine)}
    assert skipped.pop(unreadable) == "cannot tokenize: TypeError"
    assert list(skipped.values()) == [None] * 5
    assert unreadable not in {row.sample_id for row in results(engine, EXACT)}
    assert len(results(engine, EXACT)) == 5
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ReplayClaim)) == 0


def ingest_values(config: Config, engine: Engine, values: list[dict[str, object]]) -> None:
    records = [RawRecord(position=f"item {i}", value=value) for i, value in enumerate(values)]
    IntakePipeline(config, engine, Secret("salt")).ingest("test", records)


def claimed_samples(engine: Engine) -> list[ClaimedSample]:
    with Session(engine) as session:
        return [ClaimedSample.from_row(row) for row in session.scalars(select(Sample).order_by(Sample.id))]


def test_a_raw_prompt_is_tokenized_without_the_chat_template(config: Config, engine: Engine, live: LiveModels) -> None:
    prompt = "The capital of France is"
    completions_api = {
        "request": {"model": "m", "prompt": prompt},
        "response": {"id": "cmpl-1", "created": 1764324000, "choices": [{"text": " Paris."}]},
    }
    ingest_values(config, engine, [completions_api])
    worker = replayer(engine, live, exact_fraction=1.0)
    worker.replay_all()
    [sample] = claimed_samples(engine)
    tokens = worker.tokenize(sample)
    raw = list(live.target.tokenizer(prompt)["input_ids"])
    assert tokens.prompt_ids == raw
    assert raw != live.target.encode_chat([{"role": "user", "content": prompt}])
    [scored], [exact] = results(engine), results(engine, EXACT)
    assert scored.prompt_tokens == exact.prompt_tokens == len(raw)


def test_a_completion_cut_by_length_gets_no_eos(config: Config, engine: Engine, live: LiveModels) -> None:
    text = "Open settings, choose security, then reset"

    def exchange(index: int, finish_reason: str) -> dict[str, object]:
        return {
            "id": f"req-{index}",
            "messages": [{"role": "user", "content": "How do I reset my password?"}],
            "completion": text,
            "finish_reason": finish_reason,
            "max_tokens": 40,
        }

    ingest_values(config, engine, [exchange(1, "length"), exchange(2, "stop")])
    worker = replayer(engine, live)
    worker.replay_all()
    cut, stopped = (worker.tokenize(sample) for sample in claimed_samples(engine))
    plain = live.target.encode_completion(text, end_with_eos=False)
    assert (cut.completion_ids, cut.max_new_tokens) == (plain, len(plain))
    assert (stopped.completion_ids, stopped.max_new_tokens) == ([*plain, live.target.eos_token_id], 40)
    cut_row, stopped_row = results(engine)
    assert (cut_row.completion_tokens, stopped_row.completion_tokens) == (len(plain), len(plain) + 1)
    [direct] = score_batch(live.target, live.draft, [cut.sample("cut")], window=4)
    assert AcceptCounts.from_dict(cut_row.counts) == direct.counts


def greedy_exchanges(target: TargetModel, max_new_tokens: int) -> list[tuple[list[int], list[int], dict[str, object]]]:
    """Held-out prompts (en, zh, code) answered by the target's own greedy decoding, logged as an
    engine with return_token_ids logs them: (prompt ids, generated ids, specwatch record)."""
    documents = (
        split(dialog_documents("en"))[1][:10]
        + split(dialog_documents("zh"))[1][:8]
        + split(code_documents(60_000))[1][:6]
    )
    turns = [[dict(zip(("role", "content"), document.messages[0], strict=True))] for document in documents]
    prompts = [target.encode_chat(turn) for turn in turns]
    exchanges = []
    for index, (turn, prompt, generated) in enumerate(
        zip(turns, prompts, target.greedy_continuations(prompts, max_new_tokens=max_new_tokens), strict=True)
    ):
        stopped = generated[-1] == target.eos_token_id
        text = target.tokenizer.decode(generated, skip_special_tokens=True)
        value = {
            "id": f"greedy-{index}",
            "messages": turn,
            "completion": text,
            "finish_reason": "stop" if stopped else "length",
            "max_tokens": max_new_tokens,
            "prompt_token_ids": prompt,
            "completion_token_ids": generated,
        }
        exchanges.append((prompt, generated, value))
    return exchanges


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # about the decoder, not the store
def test_logged_token_ids_make_scored_mode_equal_the_verify_loop(
    config: Config, engine: Engine, live: LiveModels
) -> None:
    """The independent truth is exact mode generating from the prompt ids: replayed from the ids the
    engine logged, scored counts equal it on every sample, though some texts re-tokenize to other ids."""
    cap = 20
    exchanges = greedy_exchanges(live.target, cap)
    ingest_values(config, engine, [value for _, _, value in exchanges])
    replayer(engine, live, window=3).replay_all()
    with Session(engine) as session:
        prompts = {sample.id: sample.messages[0]["content"] for sample in session.scalars(select(Sample))}
    by_prompt = {value["messages"][0]["content"]: (prompt, generated) for prompt, generated, value in exchanges}  # type: ignore[index]
    assert len(by_prompt) == len(exchanges)
    scored = results(engine)
    assert len(scored) >= 14
    differs = 0
    for row in scored:
        prompt, generated = by_prompt[prompts[row.sample_id]]
        truth = exact_generate(live.target, live.draft, prompt, window=3, max_new_tokens=cap)
        assert truth.tokens == generated
        assert AcceptCounts.from_dict(row.counts) == truth.counts
        assert row.token_source == "ids"
        text = live.target.tokenizer.decode(generated, skip_special_tokens=True)
        stopped = generated[-1] == live.target.eos_token_id
        retokenized = live.target.encode_completion(text, end_with_eos=stopped)
        assert row.retokenized_equal == (retokenized == generated)
        differs += retokenized != generated
    assert differs > 0, "every text re-tokenizes to its ids: this traffic cannot tell ids from text"
    since = utcnow() - timedelta(days=1)
    [overall] = segment_stats(
        load_results(engine, live.versions.draft, since),
        {"1d": timedelta(days=1)},
        utcnow() + timedelta(minutes=1),
        window_k=3,
        cost_ratio=None,
    )[:1]
    assert (overall.segment, overall.from_ids, overall.retokenized_differs) == ("*", len(scored), differs)
    table = render_table(segment_statuses([overall], "1d", "1h", config.drift), colour=False)
    assert " ids " in table.splitlines()[0] and " 100% " in table.splitlines()[1]
