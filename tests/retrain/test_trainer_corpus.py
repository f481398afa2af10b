"""The corpus in the external trainers' formats: speculators' own data preparation reads the
conversation JSONL, the ShareGPT JSONL follows SpecForge's loader, the manifest describes both, and no
holdout text leaves specwatch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from decoder import TargetModel
from monitor.base.config import Config, CorpusConfig, DriftConfig, IntakeConfig, SamplingConfig, Secret, StorageConfig
from monitor.base.db import create_db_engine, upgrade
from monitor.intake.pipeline import IntakePipeline, RawRecord
from retrain.corpus import Corpus, build_corpus, write_corpus
from retrain.trainer_corpus import TrainerCorpusError, TrainerManifest, write_trainer_corpora
from tests.decoder.formats.test_speculators_compat import compat_python  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)
SIDE_SCRIPT = Path(__file__).with_name("speculators_prepare_side.py")
OPTIONS: dict[str, Any] = {"target": "/models/target", "aux_layer_ids": [2, 4, 5], "draft_vocab_size": 64, "seed": 7}
SPECIAL = {"raw": "raw_prompt", "tool": "tool_turn", "order": "turn_order", "nouser": "no_user_turn"}
"""records of each kind (three apiece) and the reason the trainer files leave them out"""


def chat_messages(index: int) -> list[dict[str, str]]:
    question = f"问题 Q{index:03d}: 天空为什么是蓝的?" if index % 2 else f"Question Q{index:03d}: why is the sky blue?"
    shapes = [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}],
        [
            {"role": "user", "content": f"Hi H{index:03d}"},
            {"role": "assistant", "content": f"Hello P{index:03d}"},
            {"role": "user", "content": question},
        ],
        [
            {"role": "system", "content": "Answer in one line."},
            {"role": "developer", "content": f"Cite D{index:03d}."},
            {"role": "user", "content": question},
        ],
        [{"role": "user", "content": question}],
    ]
    return shapes[index % 4]


def special_record(kind: str, index: int) -> dict[str, Any]:
    question = {"role": "user", "content": f"Special S{index:03d}?"}
    if kind == "raw":
        return {"prompt": f"def f{index:03d}(x):"}
    messages = {
        "tool": [question, {"role": "assistant", "content": "calling"}, {"role": "tool", "content": "42"}],
        "order": [question, {"role": "user", "content": f"Again S{index:03d}?"}],
        "nouser": [{"role": "system", "content": f"Only a system turn S{index:03d}."}],
    }[kind]
    return {"messages": messages}


def all_records() -> list[dict[str, Any]]:
    bodies: list[tuple[str, dict[str, Any]]] = [
        (f"chat-{i}", {"messages": chat_messages(i), "completion": f"Because A{i:03d} 因为散射。"}) for i in range(24)
    ]
    for number, kind in enumerate(k for k in SPECIAL for _ in range(3)):
        body = special_record(kind, 100 + number) | {"completion": f"Done A{100 + number}"}
        bodies.append((f"{kind}-{number}", body))
    return [
        {**body, "id": record_id, "timestamp": (NOW - timedelta(hours=2 * i + 1)).isoformat()}
        for i, (record_id, body) in enumerate(bodies)
    ]


def key_of(record_id: str) -> str:
    return hashlib.sha256(f"id:{record_id}".encode()).hexdigest()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A real SQLite database holding the records, stored by the real intake."""
    directory = tmp_path_factory.mktemp("trainer-corpus-db")
    url = f"sqlite:///{directory / 'specwatch.db'}"
    engine = create_db_engine(url)
    upgrade(engine)
    config = Config(
        storage=StorageConfig(data_dir=directory / "data", database_url=url),
        intake=IntakeConfig(sampling=SamplingConfig(rate=1.0), segment_keys=[]),
    )
    raw = [RawRecord(position=f"line {i}", value=record) for i, record in enumerate(all_records())]
    report = IntakePipeline(config, engine, Secret("salt")).ingest("test", raw)
    assert report.quarantined == 0, report.problems
    return engine


def build(engine: Engine, out: Path, **kw: Any) -> Corpus:
    settings = CorpusConfig(holdout_fraction=0.25, **kw.pop("settings", {}))
    options: dict[str, Any] = {"segment_alpha": {}, "drift": DriftConfig(), "seed": 0, "now": NOW, **kw}
    return build_corpus(engine, settings, out_dir=out, **options)


@pytest.fixture(scope="module")
def corpus(database: Engine, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The corpus, with Chinese weighted up (its samples appear twice in the training stream)."""
    out = tmp_path_factory.mktemp("corpus")
    settings = {"low_alpha_weight": 3.0}
    return build(database, out, settings=settings, segment_alpha={"lang=zh": 0.1, "lang=en": 0.9})


@pytest.fixture(scope="module")
def written(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainerManifest]:
    files = write_trainer_corpora(corpus, tmp_path_factory.mktemp("trainer"), **OPTIONS)
    return files.manifest.parent, TrainerManifest.model_validate_json(files.manifest.read_text(encoding="utf-8"))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def kind_of(corpus: Corpus, key: str) -> str | None:
    kinds = {key_of(f"{kind}-{n}"): kind for n, kind in enumerate(k for k in SPECIAL for _ in range(3))}
    return kinds.get(key)


def expected_turns(messages: list[dict[str, str]], completion: str) -> list[dict[str, str]]:
    """The trainers' view written out by hand: system and developer turns up front joined as one system turn."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] in ("user", "assistant")]
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return [*head, *rest, {"role": "assistant", "content": completion}]


def test_the_files_hold_the_weighted_train_side_and_skip_what_trainers_cannot_read(
    corpus: Corpus, written: tuple[Path, TrainerManifest]
) -> None:
    directory, manifest = written
    usable = [s for s in corpus.train if kind_of(corpus, s.sample_key) is None]
    stream = [s for s in corpus.training_samples() if kind_of(corpus, s.sample_key) is None]
    assert len(stream) > len(usable), "the weighted segment repeats"
    speculators = read_lines(directory / "conversations.jsonl")
    assert [line["conversations"] for line in speculators] == [expected_turns(s.messages, s.completion) for s in stream]
    sharegpt = read_lines(directory / "sharegpt.jsonl")
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    for line, spec in zip(sharegpt, speculators, strict=True):
        expected = [{"from": roles[t["role"]], "value": t["content"]} for t in spec["conversations"]]
        assert line["conversations"] == expected
    ids = [line["id"] for line in sharegpt]
    assert len(set(ids)) == len(ids) and {i.rsplit("-", 1)[0] for i in ids} == {s.sample_key for s in usable}
    skipped: dict[str, int] = {}
    for sample in corpus.train:
        if (kind := kind_of(corpus, sample.sample_key)) is not None:
            skipped[SPECIAL[kind]] = skipped.get(SPECIAL[kind], 0) + 1
    assert len(skipped) >= 3, "the split sends most special kinds to the train side"
    assert manifest.counts.skipped == skipped
    assert manifest.counts.train_samples == len(usable) and manifest.counts.lines == len(stream)
    assert "问题" in (directory / "sharegpt.jsonl").read_text(encoding="utf-8"), "UTF-8, not \\u escapes"


def test_no_holdout_text_reaches_the_trainer_files(corpus: Corpus, written: tuple[Path, TrainerManifest]) -> None:
    directory, manifest = written
    assert corpus.holdout
    text = "".join((directory / name).read_text(encoding="utf-8") for name in ("conversations.jsonl", "sharegpt.jsonl"))
    text += (directory / "trainer_manifest.json").read_text(encoding="utf-8")
    for sample in corpus.holdout:
        unique = [m["content"] for m in sample.messages if m["role"] == "user"] + [sample.completion]
        assert not any(json.dumps(part, ensure_ascii=False)[1:-1] in text for part in unique)
        assert sample.sample_key not in text
    holdout_file = corpus.directory / "holdout.jsonl"
    assert manifest.holdout.sha256 == hashlib.sha256(holdout_file.read_bytes()).hexdigest()
    assert manifest.holdout.count == len(corpus.holdout)


def test_the_manifest_names_target_layers_vocabulary_seed_corpus_and_files(
    corpus: Corpus, written: tuple[Path, TrainerManifest], tmp_path: Path
) -> None:
    directory, manifest = written
    assert (manifest.target, manifest.aux_layer_ids, manifest.draft_vocab_size, manifest.seed) == (
        "/models/target",
        [2, 4, 5],
        64,
        7,
    )
    assert manifest.corpus_hash == corpus.content_hash and not manifest.regenerated
    for entry in manifest.files.values():
        data = (directory / entry.name).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.lines == data.count(b"\n")
    again = write_trainer_corpora(corpus, tmp_path, **OPTIONS)
    for name in ("conversations.jsonl", "sharegpt.jsonl", "trainer_manifest.json"):
        assert (tmp_path / name).read_bytes() == (directory / name).read_bytes(), "deterministic"
    assert again.speculators == tmp_path / "conversations.jsonl"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary files left"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("aux_layer_ids", [2, 2, 5], "distinct ids"),
        ("aux_layer_ids", [], "distinct ids"),
        ("draft_vocab_size", 0, "draft_vocab_size"),
        ("target", " ", "target must name"),
    ],
)
def test_unusable_arguments_are_refused(corpus: Corpus, tmp_path: Path, option: str, value: Any, message: str) -> None:
    with pytest.raises(TrainerCorpusError, match=message):
        write_trainer_corpora(corpus, tmp_path, **(OPTIONS | {option: value}))
    assert not any(tmp_path.iterdir())


def test_a_blank_completion_is_skipped_and_counted(corpus: Corpus, tmp_path: Path) -> None:
    blank = replace(corpus.train[0], completion=" \n")
    fields = corpus.manifest.model_dump(include={"created_at", "window_days", "weights", "segment_alpha"})
    fields |= corpus.manifest.model_dump(include={"threshold", "available", "duplicates_dropped", "regenerated"})
    fields |= corpus.manifest.model_dump(include={"seed", "holdout_fraction"})
    changed = write_corpus(tmp_path / "corpus", [blank, *corpus.train[1:]], corpus.holdout, fields)
    files = write_trainer_corpora(changed, tmp_path / "trainer", **OPTIONS)
    counts = TrainerManifest.model_validate_json(files.manifest.read_text(encoding="utf-8")).counts
    assert counts.skipped.get("empty_completion") == 1
    assert blank.sample_key not in files.sharegpt.read_text(encoding="utf-8")


def test_regenerated_responses_are_the_assistant_turns(database: Engine, target: TargetModel, tmp_path: Path) -> None:
    settings = {"regenerate_responses": True, "max_new_tokens": 6, "max_samples": 10}
    corpus = build(database, tmp_path / "corpus", settings=settings, target=target)
    files = write_trainer_corpora(corpus, tmp_path / "trainer", **OPTIONS)
    usable = [s for s in corpus.train if kind_of(corpus, s.sample_key) is None and s.completion.strip()]
    assert usable
    answers = target.greedy_answers([s.messages for s in usable], max_new_tokens=6)
    written = [line["conversations"][-1] for line in read_lines(files.speculators)]
    assert written == [{"role": "assistant", "content": answer} for answer in answers]
    assert all(not answer.startswith("Because A") for answer in answers), "not the logged completions"
    assert TrainerManifest.model_validate_json(files.manifest.read_text(encoding="utf-8")).regenerated


def test_speculators_prepares_training_rows_from_the_conversations(
    compat_python: Path,  # noqa: F811
    reference_models: Path,
    written: tuple[Path, TrainerManifest],
    tmp_path: Path,
) -> None:
    """speculators' own `prepare-data` pipeline (load, normalize roles, render through the target's chat
    template, mask each assistant turn) reads the file; every assistant turn comes back as supervised text."""
    directory, _ = written
    out = tmp_path / "rows.json"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path)}
    environment.pop("PYTHONPATH", None)
    arguments = [str(reference_models / "target"), str(directory / "conversations.jsonl"), str(out)]
    result = subprocess.run(
        [str(compat_python), str(SIDE_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads(out.read_text(encoding="utf-8"))
    assistant = [
        t["content"]
        for line in read_lines(directory / "conversations.jsonl")
        for t in line["conversations"]
        if t["role"] == "assistant"
    ]
    assert assistant and len(rows) == len(assistant), "one training row per assistant turn"
    assert sorted(row["supervised"] for row in rows) == sorted(f"{text}<|im_end|>\n" for text in assistant)
    assert all(len(row["input_ids"]) == len(row["loss_mask"]) for row in rows)
