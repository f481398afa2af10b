"""Shared fixtures: one tiny reference build per test session (real models, trained on real text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from decoder import DRAFT_KINDS, Draft, TargetModel, TokenizedSample, load_draft, load_target
from decoder.formats import FORMATS
from decoder.formats.mtp import load_target_mtp
from decoder.reference import ReferenceReport, build_reference
from decoder.reference.corpus import CODE, code_documents, dialog_documents, split

KINDS = tuple(DRAFT_KINDS)
IMPORTED = ("vllm-medusa", "mtp-in-target", "speculators", "sglang")
"""Heads read from engine formats (`imported_drafts`), beside one draft of each kind."""
GREEDY_MAX_NEW_TOKENS = 20


@pytest.fixture(scope="session")
def reference(reference_build: tuple[Path, ReferenceReport | None]) -> tuple[Path, ReferenceReport]:
    """The session's tiny reference build with its report (tests/conftest.py); a prebuilt one has no
    report in memory, so only the tests that read the report build one here."""
    out, report = reference_build
    if report is None:
        torch.set_num_threads(2)
        out = out.parent / "tiny-rebuilt-for-decoder-tests"
        report = build_reference("tiny", out, seed=0)
    return out, report


@pytest.fixture(scope="session")
def reference_dir(reference_build: tuple[Path, ReferenceReport | None]) -> Path:
    """The models alone: a prebuilt directory (SPECWATCH_TEST_REFERENCE_DIR) serves as it is."""
    return reference_build[0]


@pytest.fixture(scope="session")
def target(reference_dir: Path) -> TargetModel:
    return load_target(reference_dir / "target", device="cpu")


@pytest.fixture(scope="session")
def drafts(reference_dir: Path, target: TargetModel) -> dict[str, Draft]:
    return {kind: load_draft(reference_dir / "drafts" / kind, target) for kind in KINDS}


@pytest.fixture(scope="session")
def imported_drafts(
    reference_dir: Path, target: TargetModel, drafts: dict[str, Draft], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Draft]:
    """The drafts and heads imported from engine formats: a vLLM MEDUSA directory written by hand from
    the trained medusa head's weights (bias-free blocks, one original LM head), the MTP layer of the
    reference target's own checkpoint, and the trained eagle3 head exported in the speculators and
    SGLang formats and read back as `models.draft` would read them."""
    directory = tmp_path_factory.mktemp("vllm-medusa")
    weights = drafts["medusa"].state_dict()
    heads = sum(1 for name in weights if name.endswith(".linear.weight"))
    tensors = {f"blocks.{i}.layers.0.weight": weights[f"blocks.{i}.0.linear.weight"] for i in range(heads)}
    tensors["lm_head.weight"] = weights["lm_heads.0.weight"]
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(directory / "model.safetensors"))
    config = {"architectures": ["MedusaModel"], "hidden_size": target.hidden_size, "vocab_size": target.vocab_size}
    config |= {"num_heads": heads, "num_hidden_layers": 1, "original_lm_head": True}
    (directory / "config.json").write_text(json.dumps(config))
    engine_dirs = tmp_path_factory.mktemp("eagle3-exports")
    for name in ("speculators", "sglang"):
        export = FORMATS[name].export
        assert export is not None
        export(drafts["eagle3"], target, engine_dirs / name)
    return {
        **drafts,
        "vllm-medusa": FORMATS["vllm-medusa"].load(directory, target),
        "mtp-in-target": load_target_mtp(reference_dir / "target", target),
        "speculators": load_draft(engine_dirs / "speculators", target),
        "sglang": load_draft(engine_dirs / "sglang", target),
    }


@pytest.fixture(scope="session")
def greedy_samples(target: TargetModel) -> list[TokenizedSample]:
    """Held-out prompts (en, zh, code) continued by the target's own greedy decoding under a cap of
    GREEDY_MAX_NEW_TOKENS: each ends with EOS (a natural stop) or was cut by the cap."""
    documents = (
        split(dialog_documents("en"))[1][:5]
        + split(dialog_documents("zh"))[1][:3]
        + split(code_documents(60_000))[1][:3]
    )
    prompts = [target.encode_chat([document.chat[0]]) for document in documents]
    continuations = target.greedy_continuations(prompts, max_new_tokens=GREEDY_MAX_NEW_TOKENS)
    return [
        TokenizedSample(f"{d.language}-{i}", p, c, max_new_tokens=GREEDY_MAX_NEW_TOKENS)
        for i, (d, p, c) in enumerate(zip(documents, prompts, continuations, strict=True))
    ]


__all__ = ["CODE", "GREEDY_MAX_NEW_TOKENS", "IMPORTED", "KINDS"]
