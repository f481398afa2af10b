"""Serving engines' head formats: reading a head an engine serves, writing one it can load.

A format module registers a `HeadFormat`: `detect(directory)` says from config.json alone (no
weights read) whether a directory is in that format; `load(directory, target)` returns a `Draft`
attached to the target, in eval mode, on the target's device and dtype, or raises a DecoderError
that names the mismatch (hidden size, vocabulary, aux-layer ids, tokenizer); `export(draft,
target, out_dir)` writes the draft in the format and returns what it wrote.

    head_format = detect_format(Path("/models/eagle3-llama-8b"))   # None: not an engine format
    draft = head_format.load(directory, target)
    FORMATS["speculators"].export(draft, target, Path("out/speculator"))
"""

from decoder.formats.base import FORMATS, ExportResult, HeadFormat, detect_format, register_format

# Importing a format module registers it, one line per module; this order is FORMATS' order (an "auto"
# deploy picks the first format that holds a head's kind).
# isort: off
import decoder.formats.speculators
import decoder.formats.sglang
import decoder.formats.vllm_medusa
import decoder.formats.mtp
import decoder.formats.causal_lm  # noqa: F401

# isort: on

__all__ = ["FORMATS", "ExportResult", "HeadFormat", "detect_format", "register_format"]
