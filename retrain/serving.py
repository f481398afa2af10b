"""The copy of a head the serving engine loads: which engine format, and where it lies.

A head is registered in the format it came in: an engine's when it was imported (`specwatch heads
import`, or the seed `models.draft`), specwatch's own when a retrain made it. The engine needs its
own format: `retrain.deploy.format`, or with "auto" the format the live lineage came in (the nearest
ancestor stored in an engine format: a lineage seeded from a speculators checkpoint stays
speculators), else the first engine format that holds the head's kind. The copy is the head's own
directory when it is stored in that format, else an export written once, before the deploy switches
the live pointer, under `<heads>/exports/<version>/<format>/` (an export is a pure function of the
head, so a rollback finds it there).

    served = prepare_served_head(config.retrain.deploy, registry, version, lambda: target)
    run_deploy_hook(config.retrain.deploy, served)
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from decoder.formats import FORMATS, ExportResult, detect_format
from decoder.progress import NO_PROGRESS, Progress
from decoder.target import TargetModel
from monitor.base.config import DeployConfig
from retrain.deploy import ServedHead
from retrain.registry import HeadManifest, HeadRegistry, RegistryError

log = logging.getLogger(__name__)

SPECWATCH_FORMAT = "specwatch"


def stored_format(draft_dir: Path) -> str:
    """The format a draft directory is in: an engine format's name, "causal-lm" for a plain causal LM
    directory (engines load it as a draft model), or "specwatch"."""
    engine_format = detect_format(draft_dir)
    return engine_format.name if engine_format is not None else SPECWATCH_FORMAT


def engine_formats_for(kind: str) -> list[str]:
    """The engine formats that can hold a draft of this kind, in registration order."""
    return [name for name, head_format in FORMATS.items() if kind in head_format.kinds and head_format.export]


def serving_format(config: DeployConfig, registry: HeadRegistry, version: str) -> str:
    """The format the engine loads this head in (see the module docstring)."""
    kind = registry.get(version).kind
    if config.format != "auto":
        if config.format != SPECWATCH_FORMAT and config.format not in engine_formats_for(kind):
            raise RegistryError(f"retrain.deploy.format = {config.format!r} cannot hold a head of kind {kind}")
        return config.format
    ancestor: str | None = version
    while ancestor is not None:
        stored = stored_format(registry.draft_dir(ancestor))
        if stored in engine_formats_for(kind):
            return stored
        ancestor = registry.get(ancestor).parent
    formats = engine_formats_for(kind)
    return formats[0] if formats else SPECWATCH_FORMAT


def export_dir(registry: HeadRegistry, version: str, head_format: str) -> Path:
    return registry.root / "exports" / version / head_format


def existing_served_head(registry: HeadRegistry, version: str, head_format: str) -> ServedHead | None:
    """The engine's copy in `head_format` when it exists already (stored so, or exported earlier)."""
    head_dir = registry.draft_dir(version)
    if head_format == SPECWATCH_FORMAT or stored_format(head_dir) == head_format:
        return ServedHead(version, head_dir, head_format, head_dir)
    exported = export_dir(registry, version, head_format)
    return ServedHead(version, head_dir, head_format, exported) if exported.is_dir() else None


def prepare_served_head(
    config: DeployConfig, registry: HeadRegistry, version: str, target: Callable[[], TargetModel]
) -> ServedHead:
    """The engine's copy of the head, exported first when it does not exist yet (written to a
    temporary name and renamed, so a crash leaves no half export). `target` is called only then."""
    head_format = serving_format(config, registry, version)
    served = existing_served_head(registry, version, head_format)
    if served is not None:
        return served
    final = export_dir(registry, version, head_format)
    staging = final.parent / f".{head_format}.{uuid.uuid4().hex}.tmp"
    try:
        export_head(registry, version, head_format, staging, target)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ServedHead(version, registry.draft_dir(version), head_format, final)


EAGLE_NOT_MAPPABLE = (
    "an eagle head cannot be mapped to EAGLE-3 exactly: it projects cat(norm(embedding), norm(feature)) to H "
    "(input_proj) and norms it again before q/k/v, and its residual stream starts at that projection, while "
    "EAGLE-3's q/k/v read the 2H concatenation and its residual starts at the feature; no weights express the "
    "difference. Retrain it as an eagle3 head (specwatch retrain --now --kind eagle3), which exports losslessly"
)


EXPORT_STAGES = ("load the target", "load the head", "write the export")
"""The stages of an export that converts (`export_head`'s progress counts them); a copy has one."""


def export_head(
    registry: HeadRegistry,
    version: str,
    head_format: str,
    out_dir: Path,
    target: Callable[[], TargetModel],
    progress: Progress = NO_PROGRESS,
) -> ExportResult:
    """Writes a registered head into `out_dir` (new or empty) in `head_format`: a copy of its files when
    it is stored so, else the format's export of the loaded head (`target` is called only then). The
    result says which engines are proven to load it, and why not (`details`). `progress` hears of the
    stages done (EXPORT_STAGES, or the copy)."""
    head_dir = registry.draft_dir(version)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RegistryError(f"{out_dir} is not empty: export into a new directory")
    what = f"export {version} as {head_format}"
    if stored_format(head_dir) == head_format:
        progress.start(what, 1)
        try:
            progress.advance(0, "copy the files")
            shutil.copytree(head_dir, out_dir, dirs_exist_ok=True, copy_function=shutil.copyfile)
            progress.advance(1)
        finally:
            progress.finish()
        return ExportResult(out_dir=out_dir, format=head_format, details={"copied": "stored in this format"})
    kind = registry.get(version).kind
    if head_format not in engine_formats_for(kind):
        why = f": {EAGLE_NOT_MAPPABLE}" if kind == "eagle" else ""
        raise RegistryError(f"format {head_format!r} cannot hold a head of kind {kind}{why}")
    export = FORMATS[head_format].export
    assert export is not None, "engine_formats_for lists only formats that export"
    from decoder import load_draft

    progress.start(what, len(EXPORT_STAGES))
    try:
        progress.advance(0, EXPORT_STAGES[0])
        model = target()
        progress.advance(1, EXPORT_STAGES[1])
        draft = load_draft(head_dir, model)
        progress.advance(2, EXPORT_STAGES[2])
        result = export(draft, model, out_dir)
        progress.advance(3)
    finally:
        progress.finish()
    log.info("exported head %s as %s to %s (engines proven: %s)", version, head_format, out_dir, result.engine_loadable)
    return result


def import_head(
    registry: HeadRegistry, directory: Path, target: TargetModel, *, parent: str | None = None
) -> HeadManifest:
    """Registers a head as an engine holds it (any format load_draft reads: speculators, SGLang, vLLM
    MEDUSA, MTP weights, a causal LM, specwatch's own) after loading it for `target`: a head that does not
    fit the target (hidden size, vocabulary, aux layers, tokenizer) raises the decoder's error naming
    the mismatch and registers nothing."""
    from decoder import load_draft

    draft = load_draft(directory, target)
    head = registry.register(directory, parent=parent, source=f"import: {directory} ({stored_format(directory)})")
    log.info("imported %s head %s from %s", draft.kind, head.version, directory)
    return head
