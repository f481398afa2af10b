"""Reference models built offline from real text: a small multilingual target and its drafts.

`build_reference("demo", out_dir, seed)` trains, deterministically from the seed:

1. a byte-level BPE tokenizer with a ChatML chat template (eos <|im_end|>, pad <|endoftext|>);
2. a small Qwen2-architecture target on chatterbot-corpus dialogs (several languages, Chinese
   included) and Python standard-library source as a code segment;
3. a chat-tuning stage: the target answers training prompts of every language greedily and is
   trained on those answers, so it answers with the low entropy of a chat model (see
   `chat_tune_target`);
4. one draft of each kind, trained from the target on its answers to English and code prompts
   only (self-distillation), so Chinese and the other languages are a real blind spot; the `mtp`
   draft is also written into the target checkpoint as its MTP layer (`write_target_mtp`);

then reports the target's held-out loss on raw text and, measured by scored mode on held-out
prompts with the target's own greedy answers, each draft's alpha per language. A `progress`
(decoder.progress) hears of every training step, counted over all stages (`BuildSteps`).

    python -c "from decoder.reference import build_reference; print(build_reference('tiny', '/tmp/ref'))"
    specwatch models build-reference --size demo

Layout: out_dir/target (save_pretrained, with tokenizer), out_dir/drafts/<kind>,
out_dir/report.json, out_dir/heldout.jsonl (held-out conversations, usable as traffic).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from decoder.drafts import DRAFT_KINDS, MtpHead, create_draft, kind_objective, load_draft, save_draft
from decoder.drafts.chain import ChainHead
from decoder.formats.mtp import load_target_mtp, write_into_checkpoint
from decoder.metrics import AcceptCounts
from decoder.progress import NO_PROGRESS, Progress
from decoder.reference.corpus import CODE, Document, code_documents, dialog_documents, split
from decoder.samples import TokenizedSample
from decoder.scored import score_batch, target_agreement
from decoder.target import TargetModel, load_target
from decoder.training import FitConfig, TokenBatch, fit_draft, learning_rate_at, pack_token_batches

log = logging.getLogger(__name__)

ReferenceSizeName = Literal["tiny", "demo"]

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DRAFT_LANGUAGES = ("en", CODE)


class ReferenceSpec(BaseModel):
    """Sizes and training budgets of one reference build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    languages: tuple[str, ...] = Field(description="chatterbot languages the target learns (codes)")
    code_bytes: int = Field(ge=10_000, description="bytes of stdlib source used as the code segment")
    vocab_size: int = Field(ge=300, description="BPE vocabulary size (bytes and specials included)")
    hidden_size: int = Field(ge=16, description="target hidden size")
    num_layers: int = Field(ge=1, description="target decoder layers")
    num_heads: int = Field(ge=1, description="target attention heads")
    num_kv_heads: int = Field(ge=1, description="target key/value heads")
    intermediate_size: int = Field(ge=16, description="target MLP width")
    context_length: int = Field(ge=64, description="target context (max_position_embeddings)")
    sequence_length: int = Field(ge=16, description="training sequence length")
    target_batch_size: int = Field(ge=1, description="target training batch (sequences)")
    target_steps: int = Field(ge=1, description="target training steps")
    target_learning_rate: float = Field(gt=0, description="target peak learning rate")
    draft_batch_size: int = Field(ge=1, description="draft training batch (sequences)")
    draft_steps: int = Field(ge=1, description="training steps per draft")
    draft_learning_rate: float = Field(gt=0, description="draft peak learning rate")
    draft_model_hidden_size: int = Field(ge=16, description="hidden size of the draft_model kind")
    draft_model_layers: int = Field(ge=1, description="layers of the draft_model kind")
    medusa_heads: int = Field(ge=1, le=16, description="heads of the medusa kind")
    medusa_blocks: int = Field(ge=1, le=4, description="residual blocks per medusa head")
    eagle_train_depth: int = Field(ge=1, le=8, description="chain depth unrolled when training the eagle head")
    answer_prompts: int = Field(ge=1, description="training prompts the target answers for the chat-tuning stage")
    answer_tokens: int = Field(ge=1, description="most tokens of each of those greedy answers")
    chat_tuning_steps: int = Field(ge=0, description="steps of training the target on its own answers")
    chat_tuning_learning_rate: float = Field(gt=0, description="peak learning rate of that stage")
    eval_prompts: int = Field(ge=1, description="held-out prompts per language for the report")
    eval_new_tokens: int = Field(ge=2, description="tokens of the target's greedy continuation per prompt")
    window: int = Field(ge=1, description="verify window k of the reported alpha")


REFERENCE_SPECS: dict[str, ReferenceSpec] = {
    "tiny": ReferenceSpec(
        languages=("en", "zh"),
        code_bytes=60_000,
        vocab_size=512,
        hidden_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=256,
        context_length=256,
        sequence_length=64,
        target_batch_size=16,
        target_steps=300,
        target_learning_rate=3e-3,
        draft_batch_size=16,
        draft_steps=60,
        draft_learning_rate=3e-3,
        draft_model_hidden_size=48,
        draft_model_layers=1,
        medusa_heads=3,
        medusa_blocks=1,
        eagle_train_depth=1,
        answer_prompts=500,
        answer_tokens=32,
        chat_tuning_steps=60,
        chat_tuning_learning_rate=2e-3,
        eval_prompts=12,
        eval_new_tokens=24,
        window=3,
    ),
    "demo": ReferenceSpec(
        languages=("en", "zh", "ja", "es", "de"),
        code_bytes=200_000,
        vocab_size=2048,
        hidden_size=192,
        num_layers=4,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=576,
        context_length=512,
        sequence_length=128,
        target_batch_size=16,
        target_steps=500,
        target_learning_rate=2e-3,
        draft_batch_size=16,
        draft_steps=120,
        draft_learning_rate=2e-3,
        draft_model_hidden_size=96,
        draft_model_layers=2,
        medusa_heads=4,
        medusa_blocks=2,
        eagle_train_depth=3,
        answer_prompts=1600,
        answer_tokens=40,
        chat_tuning_steps=120,
        chat_tuning_learning_rate=1e-3,
        eval_prompts=50,
        eval_new_tokens=32,
        window=4,
    ),
}


@dataclass
class LanguageScore:
    """A draft's scored-mode figures on one language's held-out traffic."""

    alpha: float | None
    tau: float | None
    draft_acceptance_rate: float | None
    samples: int
    tokens: int
    target_agreement: float | None


@dataclass
class ReferenceReport:
    size: str
    seed: int
    out_dir: str
    seconds: float
    target_parameters: int
    target_train_seconds: float
    heldout_loss: dict[str, float]
    heldout_loss_before_chat_tuning: dict[str, float]
    window: int
    drafts: dict[str, dict[str, LanguageScore]] = field(default_factory=dict)
    draft_train_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "seed": self.seed,
            "out_dir": self.out_dir,
            "seconds": round(self.seconds, 1),
            "target": {
                "parameters": self.target_parameters,
                "train_seconds": round(self.target_train_seconds, 1),
                "heldout_loss": {k: round(v, 4) for k, v in self.heldout_loss.items()},
                "heldout_loss_before_chat_tuning": {
                    k: round(v, 4) for k, v in self.heldout_loss_before_chat_tuning.items()
                },
            },
            "window": self.window,
            "drafts": {
                kind: {
                    "train_seconds": round(self.draft_train_seconds.get(kind, 0.0), 1),
                    "languages": {lang: vars(score) for lang, score in scores.items()},
                }
                for kind, scores in self.drafts.items()
            },
        }

    def summary_lines(self) -> list[str]:
        losses = ", ".join(f"{lang} {loss:.3f}" for lang, loss in self.heldout_loss.items())
        before = ", ".join(f"{lang} {loss:.3f}" for lang, loss in self.heldout_loss_before_chat_tuning.items())
        lines = [
            f"reference {self.size} (seed {self.seed}) built in {self.seconds:.0f}s at {self.out_dir}",
            f"target: {self.target_parameters / 1e6:.2f}M parameters, held-out loss (nats/token) {losses}",
            f"  before chat tuning: {before}",
            f"draft alpha per language (scored mode, greedy, k={self.window}; drafts trained on en+code only):",
        ]
        languages = list(self.heldout_loss)
        lines.append("  " + "kind".ljust(12) + "".join(lang.rjust(8) for lang in languages))
        for kind, scores in self.drafts.items():
            cells = []
            for lang in languages:
                alpha = scores[lang].alpha if lang in scores else None
                cells.append(("-" if alpha is None else f"{alpha:.3f}").rjust(8))
            lines.append("  " + kind.ljust(12) + "".join(cells))
        return lines


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the chat specials, wrapped for transformers with a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def render(tokenizer: PreTrainedTokenizerBase, document: Document) -> str:
    return str(tokenizer.apply_chat_template(document.chat, tokenize=False))


def encode_documents(tokenizer: PreTrainedTokenizerBase, documents: Sequence[Document]) -> list[list[int]]:
    return [list(tokenizer(render(tokenizer, d), add_special_tokens=False)["input_ids"]) for d in documents]


def build_target_model(spec: ReferenceSpec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model: PreTrainedModel = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def train_target(
    model: PreTrainedModel,
    batches: Sequence[TokenBatch],
    settings: FitConfig,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Next-token cross-entropy training of the target (the same schedule as fit_draft);
    `on_step(done)` follows each step."""
    torch.manual_seed(settings.seed)
    order_rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for step in range(settings.steps):
        if not order:
            order = list(range(len(batches)))
            order_rng.shuffle(order)
        batch = batches[order.pop()]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        loss = model(input_ids=batch.input_ids, labels=batch.input_ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1)
        if (step + 1) % settings.log_every == 0:
            log.info("target step %d/%d loss %.4f", step + 1, settings.steps, sum(losses[-50:]) / len(losses[-50:]))
    model.eval()
    return losses


@torch.inference_mode()
def heldout_loss(target: TargetModel, sequences: Sequence[list[int]], max_length: int) -> float:
    """Token-weighted next-token cross-entropy of the target on held-out documents."""
    total, count = 0.0, 0
    for sequence in sequences:
        ids = torch.tensor(sequence[:max_length], dtype=torch.long, device=target.device)[None]
        if ids.shape[1] < 2:
            continue
        logits = target.logits(target.forward(ids).hidden[0, :-1])
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total / max(1, count)


def evaluation_samples(
    target: TargetModel, documents: Sequence[Document], spec: ReferenceSpec
) -> list[TokenizedSample]:
    """First user turn of held-out documents, continued by the target's own greedy decoding."""
    prompts = [target.encode_chat([document.chat[0]]) for document in documents[: spec.eval_prompts]]
    continuations = target.greedy_continuations(prompts, max_new_tokens=spec.eval_new_tokens)
    return [
        TokenizedSample(f"{document.language}-{index}", prompt, continuation, max_new_tokens=spec.eval_new_tokens)
        for index, (document, prompt, continuation) in enumerate(zip(documents, prompts, continuations, strict=False))
    ]


def score_language(target: TargetModel, draft: Any, samples: Sequence[TokenizedSample], window: int) -> LanguageScore:
    scores = [s for s in score_batch(target, draft, samples, window=window) if s.skipped is None]
    counts = AcceptCounts.total(s.counts for s in scores)
    return LanguageScore(
        alpha=counts.alpha,
        tau=counts.tau,
        draft_acceptance_rate=counts.draft_acceptance_rate,
        samples=len(scores),
        tokens=sum(s.completion_tokens for s in scores),
        target_agreement=target_agreement(scores),
    )


def _draft_overrides(kind: str, spec: ReferenceSpec) -> dict[str, Any]:
    if kind == "draft_model":
        return {
            "hidden_size": spec.draft_model_hidden_size,
            "num_layers": spec.draft_model_layers,
            "num_heads": 4,
            "num_kv_heads": 2,
        }
    if kind == "medusa":
        return {"num_heads": spec.medusa_heads, "num_residual_blocks": spec.medusa_blocks}
    if issubclass(DRAFT_KINDS[kind], ChainHead):  # eagle, eagle3, mtp: unrolled alike, compared alike
        return {"train_depth": spec.eagle_train_depth}
    return {}  # another registered kind: its default config for the target


@dataclass
class ReferenceCorpus:
    """Train and held-out documents per language (chatterbot languages and "code")."""

    train: dict[str, list[Document]]
    heldout: dict[str, list[Document]]

    @property
    def languages(self) -> list[str]:
        return list(self.train)


def load_reference_corpus(spec: ReferenceSpec) -> ReferenceCorpus:
    documents = {lang: dialog_documents(lang) for lang in spec.languages}
    documents[CODE] = code_documents(spec.code_bytes)
    corpus = ReferenceCorpus(train={}, heldout={})
    for lang, items in documents.items():
        corpus.train[lang], corpus.heldout[lang] = split(items)
    return corpus


def pretrain_target(
    spec: ReferenceSpec,
    corpus: ReferenceCorpus,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> PreTrainedModel:
    """The target LM trained on every language's training documents."""
    documents = [d for lang in corpus.languages for d in corpus.train[lang]]
    random.Random(seed).shuffle(documents)
    batches = pack_token_batches(
        encode_documents(tokenizer, documents),
        sequence_length=spec.sequence_length,
        batch_size=spec.target_batch_size,
    )
    model = build_target_model(spec, tokenizer)
    settings = FitConfig(
        steps=spec.target_steps, learning_rate=spec.target_learning_rate, warmup_steps=20, seed=seed, log_every=100
    )
    train_target(model, batches, settings, on_step)
    return model


@dataclass
class Answer:
    """A training prompt and the target's greedy answer, as one token sequence."""

    language: str
    tokens: list[int]


def self_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, corpus: ReferenceCorpus, spec: ReferenceSpec, seed: int
) -> list[Answer]:
    """The target's greedy answers to the first user turn of training documents (all languages)."""
    documents = [d for lang in corpus.languages for d in corpus.train[lang]]
    random.Random(seed + 1).shuffle(documents)
    documents = documents[: spec.answer_prompts]
    answering = TargetModel(model, tokenizer)
    prompts = [answering.encode_chat([d.chat[0]]) for d in documents]
    continuations = answering.greedy_continuations(prompts, max_new_tokens=spec.answer_tokens, batch_size=64)
    return [
        Answer(d.language, prompt + continuation)
        for d, prompt, continuation in zip(documents, prompts, continuations, strict=True)
    ]


def chat_tune_target(
    model: PreTrainedModel,
    answers: Sequence[Answer],
    spec: ReferenceSpec,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Trains the target on its own answers (all languages). Chat-tuned production models answer
    with low entropy, which is what makes drafting pay; a small CPU-trained LM is far flatter (its
    top token along its own greedy output has probability ~0.2), so no draft could match its near
    ties. This stage, like SFT on self-generated responses, makes the reference behave like a
    chat model; it raises the held-out loss on raw text, which the report shows."""
    if spec.chat_tuning_steps == 0:
        return
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    batches = pack_token_batches(
        [answer.tokens for answer in answers], sequence_length=spec.sequence_length, batch_size=spec.target_batch_size
    )
    settings = FitConfig(
        steps=spec.chat_tuning_steps,
        learning_rate=spec.chat_tuning_learning_rate,
        warmup_steps=10,
        seed=seed,
        log_every=100,
    )
    train_target(model, batches, settings, on_step)


class BuildSteps:
    """The build's optimizer steps, summed over its training stages, reported as one piece of work
    (the stages between them, answering and scoring, take time but no steps)."""

    def __init__(self, progress: Progress, spec: ReferenceSpec) -> None:
        self.progress = progress
        self.total = spec.target_steps + spec.chat_tuning_steps + len(DRAFT_KINDS) * spec.draft_steps
        self.before = 0
        self.stage_steps = 0
        self.note = ""

    def stage(self, note: str, steps: int = 0) -> None:
        """The next stage, of `steps` optimizer steps."""
        self.before += self.stage_steps
        self.stage_steps, self.note = steps, note
        self.progress.advance(self.before, note)

    def step(self, done: int, *_: object) -> None:
        """`done` steps of the current stage are complete (fits train_target's and fit_draft's on_step)."""
        self.progress.advance(self.before + done, self.note)


def build_reference(
    size: ReferenceSizeName | str,
    out_dir: str | Path,
    seed: int = 0,
    spec: ReferenceSpec | None = None,
    progress: Progress = NO_PROGRESS,
) -> ReferenceReport:
    """Builds the reference target and drafts into out_dir; see the module docstring. `spec`
    replaces the named size's settings (for experiments); `progress` hears of every training step."""
    if spec is None:
        if size not in REFERENCE_SPECS:
            raise ValueError(f"unknown reference size {size!r}; choose from {sorted(REFERENCE_SPECS)}")
        spec = REFERENCE_SPECS[size]
    steps = BuildSteps(progress, spec)
    progress.start("build-reference", steps.total)
    try:
        return _build(str(size), Path(out_dir), seed, spec, steps)
    finally:
        progress.finish()


def _build(size: str, out: Path, seed: int, spec: ReferenceSpec, steps: BuildSteps) -> ReferenceReport:
    started = time.perf_counter()
    torch.manual_seed(seed)
    steps.stage("corpus and tokenizer")
    corpus = load_reference_corpus(spec)
    tokenizer = train_tokenizer(
        [render_plain(d) for lang in corpus.languages for d in corpus.train[lang]], spec.vocab_size
    )
    target_started = time.perf_counter()
    steps.stage("target", spec.target_steps)
    model = pretrain_target(spec, corpus, tokenizer, seed, steps.step)
    pretrained_losses = _heldout_losses(TargetModel(model, tokenizer), corpus, spec)
    steps.stage("answering prompts")
    answers = self_answers(model, tokenizer, corpus, spec, seed)
    steps.stage("chat tuning", spec.chat_tuning_steps)
    chat_tune_target(model, answers, spec, seed, steps.step)
    target = TargetModel(model, tokenizer)
    target_seconds = time.perf_counter() - target_started
    losses = _heldout_losses(target, corpus, spec)
    log.info("target trained in %.0fs; held-out loss %s", target_seconds, losses)
    out.mkdir(parents=True, exist_ok=True)
    target.model.save_pretrained(out / "target")
    tokenizer.save_pretrained(out / "target")

    draft_batches = pack_token_batches(
        [answer.tokens for answer in answers if answer.language in DRAFT_LANGUAGES],
        sequence_length=spec.sequence_length,
        batch_size=spec.draft_batch_size,
    )
    steps.stage("evaluation prompts")
    samples = {lang: evaluation_samples(target, corpus.heldout[lang], spec) for lang in corpus.languages}
    report = ReferenceReport(
        size=size,
        seed=seed,
        out_dir=str(out),
        seconds=0.0,
        target_parameters=sum(p.numel() for p in target.model.parameters()),
        target_train_seconds=target_seconds,
        heldout_loss=losses,
        heldout_loss_before_chat_tuning=pretrained_losses,
        window=spec.window,
    )
    for kind in DRAFT_KINDS:
        steps.stage(f"draft {kind}", spec.draft_steps)
        draft = create_draft(kind, target, **_draft_overrides(kind, spec))
        settings = FitConfig(
            steps=spec.draft_steps, learning_rate=spec.draft_learning_rate, warmup_steps=10, seed=seed, log_every=100
        )
        result = fit_draft(target, draft, draft_batches, settings, on_step=steps.step)
        report.draft_train_seconds[kind] = result.seconds
        save_draft(
            draft,
            out / "drafts" / kind,
            training={
                **result.metadata(),
                "languages": list(DRAFT_LANGUAGES),
                "data": "the target's greedy answers to English and code training prompts",
                "reference_size": size,
                "objective": kind_objective(kind),
            },
        )
        steps.stage(f"scoring {kind}")
        report.drafts[kind] = {
            lang: score_language(target, draft, samples[lang], spec.window) for lang in corpus.languages
        }
    if MtpHead.kind in report.drafts:
        write_target_mtp(out, target)
    _write_heldout(out / "heldout.jsonl", [d for lang in corpus.languages for d in corpus.heldout[lang]])
    report.seconds = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    for line in report.summary_lines():
        log.info("%s", line)
    return report


def write_target_mtp(out: Path, target: TargetModel) -> None:
    """Writes the trained `mtp` draft into the target checkpoint as its MTP layer (`model.layers.{N}.*`,
    `num_nextn_predict_layers: 1`), so `models.draft = "mtp"` serves the reference target; checks that
    the checkpoint still loads with transformers, to the same fingerprint and the same MTP head."""
    draft = load_draft(out / "drafts" / MtpHead.kind, target)
    write_into_checkpoint(draft, target, out / "target")
    written = load_target(out / "target", device=target.device, dtype=target.dtype)
    if written.fingerprint != target.fingerprint:
        raise RuntimeError(f"the target's fingerprint changed from {target.fingerprint} to {written.fingerprint}")
    reread = load_target_mtp(out / "target", written)
    if any(
        not torch.equal(a, b) for a, b in zip(draft.state_dict().values(), reread.state_dict().values(), strict=True)
    ):
        raise RuntimeError("the MTP layer read back from the target checkpoint differs from the trained head")


def _heldout_losses(target: TargetModel, corpus: ReferenceCorpus, spec: ReferenceSpec) -> dict[str, float]:
    return {
        lang: heldout_loss(target, encode_documents(target.tokenizer, corpus.heldout[lang]), spec.context_length)
        for lang in corpus.languages
    }


def render_plain(document: Document) -> str:
    """The ChatML text of a document (tokenizer training happens before the template exists)."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in document.messages)


def _write_heldout(path: Path, documents: Sequence[Document]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps({"language": document.language, "messages": document.chat}, ensure_ascii=False))
            handle.write("\n")
