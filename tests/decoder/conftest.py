"""Shared fixtures: one tiny reference build per test session (real models, trained on real text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from decoder import DRAFT_KINDS, Draft, TargetModel, TokenizedSample, load_draft, load_target
from decoder.reference import ReferenceReport, build_reference
from decoder.reference.corpus import CODE, code_documents, dialog_documents, split

KINDS = tuple(DRAFT_KINDS)
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


__all__ = ["CODE", "GREEDY_MAX_NEW_TOKENS", "KINDS"]
