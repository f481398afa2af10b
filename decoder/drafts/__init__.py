"""Draft kinds, their configs, and saving/loading a draft as a directory.

A saved draft is `config.json` (a `DraftManifest`: kind and its config, the fingerprint of the
target it was made for, the tokenizer's fingerprint, free-form training metadata) and
`model.safetensors` (its own weights; modules shared with the target are not saved).

    draft = create_draft("medusa", target, num_heads=4)
    save_draft(draft, "heads/medusa-v1", training={"corpus": "en+code", "steps": 400})
    draft = load_draft("heads/medusa-v1", target)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError
from safetensors.torch import load_model, save_model

from decoder.drafts.base import (
    DRAFT_KINDS,
    Draft,
    DraftConfigBase,
    DraftInputs,
    DraftSession,
    Proposal,
    kind_objective,
    register_draft,
)

# isort: off
# Importing a kind registers it: this order is DRAFT_KINDS' order, the order the reference build
# creates and trains its drafts in (their initial weights come from one seeded RNG, in turn).
from decoder.drafts.draft_model import DraftModel, DraftModelConfig
from decoder.drafts.medusa import MedusaConfig, MedusaHeads
from decoder.drafts.eagle import EagleConfig, EagleHead
from decoder.drafts.eagle3 import Eagle3Config, Eagle3Head
from decoder.drafts.mtp import MtpConfig, MtpHead

# isort: on
from decoder.errors import DraftFormatError, DraftTargetMismatchError, TokenizerMismatchError
from decoder.formats import detect_format
from decoder.target import TargetModel

log = logging.getLogger(__name__)

# The config of any registered kind (a static union, for pydantic's discriminator and for type
# checkers; tests/decoder/test_drafts.py checks that it covers DRAFT_KINDS).
DraftConfig = Annotated[
    DraftModelConfig | MedusaConfig | EagleConfig | Eagle3Config | MtpConfig, Field(discriminator="kind")
]
DraftKind = str
"""A draft kind's name: a key of DRAFT_KINDS."""

MANIFEST_FORMAT = "specwatch-draft"
MANIFEST_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class DraftManifest(BaseModel):
    """config.json of a saved draft."""

    format: Literal["specwatch-draft"] = Field(default="specwatch-draft", description="file format marker")
    format_version: int = Field(default=1, ge=1, le=1, description="version of this file format")
    draft: DraftConfig = Field(description="the draft's kind and architecture")
    target_fingerprint: str = Field(min_length=1, description="target_fingerprint() of its target")
    tokenizer_fingerprint: str = Field(min_length=1, description="tokenizer_fingerprint() of its tokenizer")
    training: dict[str, Any] = Field(default_factory=dict, description="how it was trained (free-form)")


def create_draft(kind: str, target: TargetModel, **config_overrides: Any) -> Draft:
    """A freshly initialized draft of a registered kind, sized for `target`."""
    if kind not in DRAFT_KINDS:
        raise DraftFormatError(f"unknown draft kind {kind!r}; known kinds: {sorted(DRAFT_KINDS)}")
    draft_class = DRAFT_KINDS[kind]
    return draft_class.for_target(draft_class.default_config(target, **config_overrides), target)


def save_draft(draft: Draft, directory: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Writes config.json + model.safetensors; `training` replaces the draft's training metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if training is not None:
        draft.training_metadata = dict(training)
    manifest = DraftManifest.model_validate(
        {
            "draft": draft.config.model_dump(),
            "target_fingerprint": draft.target_fingerprint,
            "tokenizer_fingerprint": draft.tokenizer_fingerprint,
            "training": draft.training_metadata,
        }
    )
    save_model(draft, str(directory / WEIGHTS_FILE))
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    log.info("saved %s draft to %s", draft.kind, directory)
    return directory


def read_manifest(directory: str | Path) -> DraftManifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DraftFormatError(f"{directory} has no {MANIFEST_FILE}")
    try:
        return DraftManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise DraftFormatError(f"{path} is not a specwatch draft config: {exc}") from None


def load_draft(directory: str | Path, target: TargetModel, *, check_target: bool = True) -> Draft:
    """Loads a saved draft for `target`, on its device and in its dtype.

    Refuses a draft whose tokenizer differs from the target's (TokenizerMismatchError) and, unless
    `check_target` is False (e.g. to warm-start training for a new target), one made for another
    target (DraftTargetMismatchError, both fingerprints shown). A plain causal LM directory with
    its own tokenizer (e.g. a small model of the target's family) loads as a `draft_model`; a head in
    a serving engine's format (decoder.formats) loads through that format, which checks it against
    the target."""
    directory = Path(directory)
    engine_format = detect_format(directory)
    if engine_format is not None:
        return engine_format.load(directory, target)
    manifest = read_manifest(directory)
    if manifest.tokenizer_fingerprint != target.tokenizer_fingerprint:
        raise TokenizerMismatchError(target.tokenizer_fingerprint, manifest.tokenizer_fingerprint, str(directory))
    if check_target and manifest.target_fingerprint != target.fingerprint:
        raise DraftTargetMismatchError(manifest.target_fingerprint, target.fingerprint, str(directory))
    draft_class = DRAFT_KINDS[manifest.draft.kind]
    draft = draft_class(manifest.draft)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DraftFormatError(f"{directory} has no {WEIGHTS_FILE}")
    load_model(draft, str(weights))
    draft.target_fingerprint = manifest.target_fingerprint
    draft.tokenizer_fingerprint = manifest.tokenizer_fingerprint
    draft.training_metadata = manifest.training
    draft.attach(target)
    draft.eval()
    return draft.to(device=target.device, dtype=target.dtype)


__all__ = [
    "DRAFT_KINDS",
    "Draft",
    "DraftConfig",
    "DraftConfigBase",
    "DraftInputs",
    "DraftKind",
    "DraftManifest",
    "DraftModel",
    "DraftModelConfig",
    "DraftSession",
    "Eagle3Config",
    "Eagle3Head",
    "EagleConfig",
    "EagleHead",
    "MedusaConfig",
    "MedusaHeads",
    "MtpConfig",
    "MtpHead",
    "Proposal",
    "create_draft",
    "kind_objective",
    "load_draft",
    "read_manifest",
    "register_draft",
    "save_draft",
]
