"""The retrain corpus in the external trainers' own data formats, next to specwatch's files.

    files = write_trainer_corpora(corpus, work / "trainer-data", target="/models/qwen2.5-7b",
                                  aux_layer_ids=config.aux_layer_ids, draft_vocab_size=32000, seed=0)
    files.speculators, files.sharegpt, files.manifest

Three files, each written atomically (manifest last, after removing the old one):

- `conversations.jsonl`: vLLM speculators' and NVIDIA ModelOpt's conversation JSONL, one object per
  line, `{"conversations": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}`: the
  sample's messages, then its completion as the final assistant turn. speculators'
  `prepare-data` renders it through the target's chat template and masks the loss at each
  assistant turn.
- `sharegpt.jsonl`: SpecForge's ShareGPT JSONL, `{"id": ..., "conversations": [{"from": "system" |
  "human" | "gpt", "value": ...}]}`, for its training loader (`data.train_data_path`), whose parser
  (specforge/data/parse.py, `Parser._normalize_message` and `GeneralParser.parse`) maps human/gpt to
  user/assistant, keeps a system turn only in first place and cuts a conversation at the first turn
  out of user/assistant alternation. SpecForge's `scripts/prepare_data.py` would drop a system turn,
  so this file goes to training as it is.
- `trainer_manifest.json` (a `TrainerManifest`): the target, the aux-layer ids in vLLM numbering,
  the draft vocabulary size, the seed, the corpus hash, the counts, and the holdout as its hash and
  count only.

Only train samples leave specwatch; the holdout stays, since the gate measures a retrained head on
it. The train side is written as `Corpus.training_samples()` orders it (low-alpha segments
repeated), so an external run weighs segments as the in-process trainer does. A completion is what
the corpus holds: the logged one, or the target's own answer when the corpus regenerated responses.

Both files hold the same samples. A sample is skipped, and counted by reason, when its completion is
blank, it has no user turn, it was a raw prompt (completions API: the engine read it without the
chat template the trainers apply), it holds a tool turn (the tool-call ids it needs are not
stored), or its turns do not take the order the trainers read (leading system turns, then user and
assistant alternating from a user turn, ending on a user turn). OpenAI's `developer` role is a
system turn; leading system turns are joined into one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from decoder.files import write_atomically
from retrain.corpus import HOLDOUT_FILE, Corpus, CorpusSample

log = logging.getLogger(__name__)

SPECULATORS_FILE = "conversations.jsonl"
SHAREGPT_FILE = "sharegpt.jsonl"
TRAINER_MANIFEST_FILE = "trainer_manifest.json"

SYSTEM_ROLES = frozenset({"system", "developer"})
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
SkipReason = Literal["empty_completion", "no_user_turn", "raw_prompt", "tool_turn", "turn_order"]


class TrainerCorpusError(ValueError):
    """Arguments that no trainer could use (no target, bad aux-layer ids, a vocabulary of 0)."""


@dataclass(frozen=True)
class TrainerCorpus:
    speculators: Path
    """speculators / ModelOpt conversation JSONL"""
    sharegpt: Path
    """SpecForge ShareGPT JSONL"""
    manifest: Path
    """trainer manifest JSON"""


class TrainerFile(BaseModel):
    name: str = Field(description="file name, in the manifest's directory")
    sha256: str = Field(min_length=64, max_length=64, description="sha256 of the file's bytes")
    lines: int = Field(ge=0, description="JSON objects in the file, one per line")


class HoldoutReference(BaseModel):
    """The holdout as the trainer may know it: which one, and how large, never its content."""

    sha256: str = Field(min_length=64, max_length=64, description="sha256 of the corpus's holdout.jsonl")
    count: int = Field(ge=0, description="holdout samples, kept by specwatch for the gate")


class TrainerCounts(BaseModel):
    train_samples: int = Field(ge=0, description="distinct train samples written")
    lines: int = Field(ge=0, description="lines per file: train samples with low-alpha segments repeated")
    skipped: dict[str, int] = Field(description="distinct train samples left out, by reason")


class TrainerManifest(BaseModel):
    """trainer_manifest.json: what an external trainer needs besides the conversations."""

    format: Literal["specwatch-trainer-corpus"] = Field(
        default="specwatch-trainer-corpus", description="file format marker"
    )
    format_version: int = Field(default=1, ge=1, le=1, description="version of this file format")
    target: str = Field(min_length=1, description="the target model: a local path or a model name")
    aux_layer_ids: list[int] = Field(
        min_length=1,
        description="target hidden states the head fuses, vLLM numbering: id i = hidden_states[i], the output "
        "of decoder layer i-1 (0: the embedding output); speculators' target_layer_ids",
    )
    draft_vocab_size: int = Field(ge=1, description="tokens the head can propose")
    seed: int = Field(ge=0, description="seed for the trainer's shuffling and initialization")
    corpus_hash: str = Field(min_length=64, max_length=64, description="content hash of the specwatch corpus")
    corpus_created_at: datetime = Field(description="when the specwatch corpus was built")
    regenerated: bool = Field(description="assistant turns are the target's own greedy answers")
    files: dict[str, TrainerFile] = Field(description="the data files by trainer format (speculators, sharegpt)")
    counts: TrainerCounts
    holdout: HoldoutReference

    @field_validator("aux_layer_ids")
    @classmethod
    def _distinct_ids(cls, ids: list[int]) -> list[int]:
        if min(ids) < 0 or len(set(ids)) != len(ids):
            raise ValueError(f"aux_layer_ids must be distinct ids >= 0, got {ids}")
        return ids


@dataclass(frozen=True)
class _Turn:
    role: Literal["system", "user", "assistant"]
    content: str


def conversation(sample: CorpusSample) -> list[_Turn] | SkipReason:
    """The sample's turns as the trainers read them (completion last), or why it cannot be one."""
    if not sample.completion.strip():
        return "empty_completion"
    if sample.raw_prompt:
        return "raw_prompt"
    roles = [message["role"] for message in sample.messages]
    if "user" not in roles:
        return "no_user_turn"
    if "tool" in roles:
        return "tool_turn"
    leading = 0
    while roles[leading] in SYSTEM_ROLES:
        leading += 1
    dialog = roles[leading:]
    alternating = all(role == ("user" if index % 2 == 0 else "assistant") for index, role in enumerate(dialog))
    if not alternating or len(dialog) % 2 == 0:
        return "turn_order"
    system = "\n\n".join(message["content"] for message in sample.messages[:leading])
    prefix = [_Turn("system", system)] if leading else []
    turns = [_Turn("user" if m["role"] == "user" else "assistant", m["content"]) for m in sample.messages[leading:]]
    return [*prefix, *turns, _Turn("assistant", sample.completion)]


def speculators_line(turns: Sequence[_Turn]) -> dict[str, Any]:
    return {"conversations": [{"role": turn.role, "content": turn.content} for turn in turns]}


def sharegpt_line(turns: Sequence[_Turn], line_id: str) -> dict[str, Any]:
    return {"id": line_id, "conversations": [{"from": SHAREGPT_ROLES[t.role], "value": t.content} for t in turns]}


def _jsonl(lines: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def _file(name: str, data: bytes, lines: int) -> TrainerFile:
    return TrainerFile(name=name, sha256=hashlib.sha256(data).hexdigest(), lines=lines)


def _check_arguments(target: str, aux_layer_ids: Sequence[int], draft_vocab_size: int, seed: int) -> None:
    if not target.strip():
        raise TrainerCorpusError("target must name the target model (a local path or a model name)")
    if not aux_layer_ids or min(aux_layer_ids) < 0 or len(set(aux_layer_ids)) != len(aux_layer_ids):
        raise TrainerCorpusError(f"aux_layer_ids must be distinct ids >= 0 (vLLM numbering), got {list(aux_layer_ids)}")
    if draft_vocab_size < 1:
        raise TrainerCorpusError(f"draft_vocab_size must be >= 1, got {draft_vocab_size}")
    if seed < 0:
        raise TrainerCorpusError(f"seed must be >= 0, got {seed}")


@dataclass
class _Lines:
    """Both files' lines and what was left out."""

    speculators: list[dict[str, Any]]
    sharegpt: list[dict[str, Any]]
    train_samples: int
    skipped: dict[str, int]


def trainer_lines(corpus: Corpus) -> _Lines:
    """The train side in both formats, in `training_samples()` order; a repeated sample's ShareGPT
    ids are its key with the copy's number."""
    turns_of: dict[str, list[_Turn]] = {}
    skipped: Counter[str] = Counter()
    for sample in corpus.train:
        turns = conversation(sample)
        if isinstance(turns, str):
            skipped[turns] += 1
        else:
            turns_of[sample.sample_key] = turns
    copies: Counter[str] = Counter()
    lines = _Lines([], [], len(turns_of), dict(sorted(skipped.items())))
    for sample in corpus.training_samples():
        if (kept := turns_of.get(sample.sample_key)) is not None:
            copies[sample.sample_key] += 1
            lines.speculators.append(speculators_line(kept))
            lines.sharegpt.append(sharegpt_line(kept, f"{sample.sample_key}-{copies[sample.sample_key]}"))
    return lines


def write_trainer_corpora(
    corpus: Corpus,
    directory: Path,
    *,
    target: str,
    aux_layer_ids: Sequence[int],
    draft_vocab_size: int,
    seed: int,
) -> TrainerCorpus:
    """Writes the train side of `corpus` in the trainers' formats into `directory` (see the module
    docstring). `aux_layer_ids` are vLLM's numbering, as `Eagle3Config.aux_layer_ids` holds them.
    Raises TrainerCorpusError on unusable arguments."""
    _check_arguments(target, aux_layer_ids, draft_vocab_size, seed)
    lines = trainer_lines(corpus)
    contents = {SPECULATORS_FILE: _jsonl(lines.speculators), SHAREGPT_FILE: _jsonl(lines.sharegpt)}
    manifest = TrainerManifest(
        target=target,
        aux_layer_ids=list(aux_layer_ids),
        draft_vocab_size=draft_vocab_size,
        seed=seed,
        corpus_hash=corpus.content_hash,
        corpus_created_at=corpus.manifest.created_at,
        regenerated=corpus.manifest.regenerated,
        files={
            "speculators": _file(SPECULATORS_FILE, contents[SPECULATORS_FILE], len(lines.speculators)),
            "sharegpt": _file(SHAREGPT_FILE, contents[SHAREGPT_FILE], len(lines.sharegpt)),
        },
        counts=TrainerCounts(train_samples=lines.train_samples, lines=len(lines.speculators), skipped=lines.skipped),
        holdout=HoldoutReference(sha256=corpus.manifest.files[HOLDOUT_FILE], count=corpus.manifest.holdout_count),
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TRAINER_MANIFEST_FILE).unlink(missing_ok=True)
    for name, data in contents.items():
        write_atomically(directory / name, data)
    write_atomically(directory / TRAINER_MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode("utf-8"))
    log.info(
        "trainer corpora for corpus %s: %d train samples in %d lines, %d skipped",
        corpus.content_hash[:12],
        lines.train_samples,
        len(lines.speculators),
        sum(lines.skipped.values()),
    )
    return TrainerCorpus(
        speculators=directory / SPECULATORS_FILE,
        sharegpt=directory / SHAREGPT_FILE,
        manifest=directory / TRAINER_MANIFEST_FILE,
    )
