"""Errors the decoder raises for bad input, each naming what to fix."""

from __future__ import annotations


class DecoderError(Exception):
    """Base class of the decoder's own errors."""


class TokenizerMismatchError(DecoderError):
    """Target and draft do not share one tokenizer, so token ids mean different things."""

    def __init__(self, target_tokenizer: str, draft_tokenizer: str, where: str) -> None:
        self.target_tokenizer = target_tokenizer
        self.draft_tokenizer = draft_tokenizer
        super().__init__(
            f"draft at {where} uses a different tokenizer than the target "
            f"(target tokenizer {target_tokenizer}, draft tokenizer {draft_tokenizer}); "
            "a draft must use the target's tokenizer"
        )


class DraftTargetMismatchError(DecoderError):
    """A draft trained for another target: its proposals would be measured against the wrong model."""

    def __init__(self, expected: str, actual: str, where: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"draft at {where} was made for target {expected}, but the loaded target is {actual}; "
            "retrain the draft for this target or load the target it was made for"
        )


class DraftFormatError(DecoderError):
    """A draft directory that is missing files or records an unknown kind or format."""
