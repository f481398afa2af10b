"""Export a registered head in a serving engine's format: an eagle3 head losslessly, as a speculators
EAGLE-3 checkpoint (vLLM) or in the SGLang / SpecForge layout (decoder.formats).

    report = export_speculators(registry.live_path(), target_dir, Path("out/speculator"), speculative_tokens=3)
    print(report.to_markdown())     # what was written, which engines are proven to load it, and why not

`vllm_loadable` is true only where it is proven: the speculators library loads our exports and computes
the same logits (tests/decoder/formats/test_speculators_compat.py), and vLLM collects the aux layers the
head reads (ids 1..N-1 of an N-layer target) with its Llama EAGLE-3 layer. Heads of the older `eagle`
kind cannot be exported: see EAGLE_NOT_MAPPABLE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from decoder import DecoderError, Draft, TargetModel, draft_version, load_draft, load_target, read_manifest
from decoder.formats import ExportResult
from decoder.formats.sglang import export_sglang_head
from decoder.formats.speculators import DEFAULT_SPECULATIVE_TOKENS, export_speculators_head

log = logging.getLogger(__name__)

REPORT_FILE = "export_report.json"

EAGLE_NOT_MAPPABLE = (
    "an eagle head cannot be mapped to EAGLE-3 exactly: it projects cat(norm(embedding), norm(feature)) to H "
    "(input_proj) and norms it again before q/k/v, and its residual stream starts at that projection, while "
    "EAGLE-3's q/k/v read the 2H concatenation and its residual starts at the feature; no weights express the "
    "difference. Retrain the head as an eagle3 head (retrain.kind = eagle3), which exports losslessly"
)


class ExportError(Exception):
    """The head cannot be exported in the requested format."""


@dataclass
class ExportReport:
    """What an export wrote and which engines are proven to load it."""

    out_dir: Path
    format: str
    source_version: str
    vllm_loadable: bool
    engine_loadable: dict[str, bool] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"out_dir": str(self.out_dir)}

    def to_markdown(self) -> str:
        lines = [
            f"{self.format} export of head {self.source_version} -> {self.out_dir}",
            f"loadable by vLLM as-is: {'yes' if self.vllm_loadable else 'no'}",
            "engines proven to load it: " + (", ".join(k for k, v in self.engine_loadable.items() if v) or "none"),
            "written: " + ", ".join(self.written),
        ]
        lines += [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines) + "\n"


def export_speculators(
    head_dir: Path, target_dir: Path, out_dir: Path, *, speculative_tokens: int = DEFAULT_SPECULATIVE_TOKENS
) -> ExportReport:
    """Writes the eagle3 head at `head_dir` (made for the target at `target_dir`) as a speculators
    checkpoint whose verifier is `target_dir`; the report is also written as export_report.json."""

    def write(draft: Draft, target: TargetModel, out: Path) -> ExportResult:
        verifier = str(Path(target_dir).resolve())
        return export_speculators_head(draft, target, out, speculative_tokens=speculative_tokens, verifier=verifier)

    return _export(Path(head_dir), Path(target_dir), Path(out_dir), write)


def export_sglang(head_dir: Path, target_dir: Path, out_dir: Path) -> ExportReport:
    """Writes the eagle3 head at `head_dir` in SGLang's LlamaForCausalLMEagle3 layout."""
    return _export(Path(head_dir), Path(target_dir), Path(out_dir), export_sglang_head)


def _export(
    head_dir: Path, target_dir: Path, out_dir: Path, write: Callable[[Draft, TargetModel, Path], ExportResult]
) -> ExportReport:
    try:
        kind = read_manifest(head_dir).draft.kind
        if kind == "eagle":
            raise ExportError(f"{head_dir}: {EAGLE_NOT_MAPPABLE}")
        if kind != "eagle3":
            raise ExportError(f"{head_dir} is a {kind} draft; the engine formats here hold eagle3 heads")
        if not (target_dir / "config.json").is_file():
            raise ExportError(f"{target_dir} is not a model directory: it has no config.json")
        target = load_target(target_dir, device="cpu")
        result = write(load_draft(head_dir, target), target, out_dir)
    except DecoderError as error:
        raise ExportError(str(error)) from None
    report = _report(result, draft_version(head_dir))
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info(
        "exported head %s to %s as %s (vLLM-loadable: %s)",
        report.source_version,
        out_dir,
        report.format,
        report.vllm_loadable,
    )
    return report


def _report(result: ExportResult, source_version: str) -> ExportReport:
    reasons = [reason for key, value in result.details.items() if key.endswith("_reasons") for reason in value]
    return ExportReport(
        out_dir=result.out_dir,
        format=result.format,
        source_version=source_version,
        vllm_loadable=result.engine_loadable.get("vllm", False),
        engine_loadable=dict(result.engine_loadable),
        reasons=reasons,
        written=list(result.details.get("written", [])),
    )
