"""Export an eagle head in vLLM's `speculators` format (EAGLE-3), as far as its architecture allows.

    report = export_speculators(registry.live_path(), target_dir, Path("out/speculator"), speculative_tokens=4)
    print(report.to_markdown())     # what mapped, what did not, and why

Writes out/speculator/config.json (speculators_model_type "eagle3"), model.safetensors (the tensors
that have an exact EAGLE-3 counterpart, under vLLM's names) and export_report.json. Our head and
EAGLE-3 agree on the feature fusion, the norms, the MLP and the output side, but not on how the
decoder layer's attention reads its input (see COMPATIBILITY), so the export is incomplete: its
config says so (`specwatch_export.vllm_loadable` false) and vLLM refuses to load it rather than
serving a head that computes something else. Heads of other kinds raise ExportError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from decoder import draft_version
from decoder.drafts import EagleConfig, read_manifest
from decoder.errors import DraftFormatError

log = logging.getLogger(__name__)

REPORT_FILE = "export_report.json"

COMPATIBILITY = """\
### vLLM `speculators` (EAGLE-3) export: what is compatible

`specwatch export` writes an eagle head as a speculators-format EAGLE-3 checkpoint: `config.json`
with `speculators_model_type: "eagle3"`, `architectures: ["Eagle3Speculator"]`, a Llama-style
`transformer_layer_config` (one layer), `draft_vocab_size`, `norm_before_residual`,
`eagle_aux_hidden_state_layer_ids` and `speculators_config` {`algorithm`, `proposal_methods`
[{`proposal_type: "greedy"`, `speculative_tokens`}], `default_proposal_method`, `verifier`
{`name_or_path`, `architectures`}}, plus `model.safetensors` under the names vLLM's
`Eagle3LlamaForCausalLM` loads.

| our head | EAGLE-3 | status |
|---|---|---|
| `fuse` (3H -> H over low/middle/high target layers) | `fc.weight` | exact |
| `embedding_norm` | `layers.0.input_layernorm.weight` (normalizes the embedding half) | exact |
| `feature_norm` | `layers.0.hidden_norm.weight` | exact |
| `layer.o_proj` | `layers.0.self_attn.o_proj.weight` | exact |
| `layer.mlp_norm` | `layers.0.post_attention_layernorm.weight` | exact |
| `layer.{gate,up,down}_proj` | `layers.0.mlp.{gate,up,down}_proj.weight` | exact |
| `final_norm` | `norm.weight` | exact |
| the target's LM head (shared) | `lm_head.weight`, `d2t` = 0, `t2d` = all true (full vocabulary) | exact |
| the target's embedding (shared) | `embed_tokens.weight` omitted: vLLM then shares the target's | exact |
| `input_proj` (2H -> H), `layer.attention_norm` | none: q/k/v read the 2H concatenation | **no counterpart** |
| `layer.{q,k,v}_proj` (H wide) | `layers.0.self_attn.{q,k,v}_proj` (2H wide) | **missing** |

Two differences have no weight that could express them. EAGLE-3's first layer feeds
`cat(input_layernorm(embedding), hidden_norm(feature))` straight into q/k/v, and its residual
stream starts at the feature itself (`norm_before_residual` false) or its normed form (true). Ours
projects the concatenation to H (`input_proj`), normalizes it again (`attention_norm`) before q/k/v,
and starts the residual stream at the projection. Folding `W_q diag(g) W_in` into a 2H-wide q_proj
drops the per-token RMS scale of the projection, and the residual cannot be rewritten at all, so the
export leaves q/k/v out, marks the config `specwatch_export.vllm_loadable: false`, and vLLM's strict
weight check refuses the checkpoint ("Following weights were not initialized from checkpoint")
instead of serving a head that computes something else. The exported tensors are a warm start for
training an EAGLE-3 head with `speculators`, not a drop-in head. A head trained with EAGLE-3's layer
layout would export completely.

Layer indices: our `feature_layers` are decoder-layer outputs (0-based); vLLM numbers an aux hidden
state by the layers before it (`hidden_states + residual` after layer i - 1 is id i), so ours map to
`eagle_aux_hidden_state_layer_ids` = layer + 1. vLLM appends each listed layer once, so a head that
fuses the same layer twice cannot be fed (flagged, not loadable). The last layer's output (id =
num_hidden_layers) is recorded by current vLLM (`EagleModelMixin._maybe_add_hidden_state` after each
layer) but not by older releases that recorded states before each layer only (noted in the report).

Sources: vllm-project/vllm `vllm/model_executor/models/llama_eagle3.py` (first layer's qkv input is
2 x hidden, `hidden_norm`, `_norm_before_residual`/`_norm_after_residual`, weight loading: `d2t` ->
`draft_id_to_target_id`, `t2d` skipped, `embed_tokens` optional, `midlayer.` -> `layers.0.`);
`vllm/transformers_utils/configs/speculators/base.py` (required keys: `speculators_model_type`,
`transformer_layer_config`, `speculators_config.proposal_methods[0].speculative_tokens`,
`speculators_config.verifier.name_or_path`) and `algos.py` `update_eagle3`
(https://docs.vllm.ai/en/v0.18.1/api/vllm/transformers_utils/configs/speculators/algos/);
`vllm/model_executor/model_loader/default_loader.py` (`track_weights_loading`);
`vllm/model_executor/models/llama.py` and `interfaces.py` (`_maybe_add_hidden_state`);
vllm-project/speculators `src/speculators/models/eagle3/{config,core,model_definitions}.py`
(`Eagle3SpeculatorConfig`, `fc` = Linear(3H, H), first layer splits the concatenation, residual =
hidden half); a published checkpoint's config:
https://huggingface.co/nm-testing/for_testing_gptoss20b_spec_eagle3/blob/main/config.json.
"""

EXACT_NAMES = {
    "fuse.weight": "fc.weight",
    "embedding_norm.weight": "layers.0.input_layernorm.weight",
    "feature_norm.weight": "layers.0.hidden_norm.weight",
    "layer.o_proj.weight": "layers.0.self_attn.o_proj.weight",
    "layer.mlp_norm.weight": "layers.0.post_attention_layernorm.weight",
    "layer.gate_proj.weight": "layers.0.mlp.gate_proj.weight",
    "layer.up_proj.weight": "layers.0.mlp.up_proj.weight",
    "layer.down_proj.weight": "layers.0.mlp.down_proj.weight",
    "final_norm.weight": "norm.weight",
}

QKV_REASON = (
    "ours is H wide and reads attention_norm(input_proj(concat)); EAGLE-3's is 2H wide and reads the "
    "concatenation: W diag(g) W_in would drop the per-token RMS scale, so there is no exact rewrite"
)
UNMAPPED_REASONS = {
    "input_proj.weight": "EAGLE-3 has no input projection: its q/k/v read cat(norm(embedding), norm(feature))",
    "layer.attention_norm.weight": "EAGLE-3 has no norm between that concatenation and q/k/v",
    "layer.q_proj.weight": QKV_REASON,
    "layer.k_proj.weight": QKV_REASON,
    "layer.v_proj.weight": QKV_REASON,
}
MISSING_TENSORS = {
    "layers.0.self_attn.q_proj.weight": "q_proj",
    "layers.0.self_attn.k_proj.weight": "k_proj",
    "layers.0.self_attn.v_proj.weight": "v_proj",
}
RESIDUAL_NOTE = (
    "residual stream: EAGLE-3's starts at the fused feature (norm_before_residual false), ours at "
    "input_proj(concat); no weight can express the difference"
)


class ExportError(Exception):
    """The head cannot be exported in the requested format."""


@dataclass
class TensorEntry:
    name: str
    shape: list[int]
    detail: str


@dataclass
class ExportReport:
    """What the export wrote and what it could not: the basis of the README's compatibility table."""

    out_dir: Path
    source_version: str
    vllm_loadable: bool
    mapped: list[TensorEntry] = field(default_factory=list)
    unmapped: list[TensorEntry] = field(default_factory=list)
    missing: list[TensorEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data

    def to_markdown(self) -> str:
        lines = [f"speculators export of head {self.source_version} -> {self.out_dir}"]
        lines.append(f"loadable by vLLM as-is: {'yes' if self.vllm_loadable else 'no'}")
        for title, entries in (("mapped", self.mapped), ("not mapped", self.unmapped), ("missing", self.missing)):
            lines.append(f"\n{title}:")
            lines += [f"- `{e.name}` {e.shape}: {e.detail}" for e in entries] or ["- (none)"]
        for title, texts in (("warnings (block loading)", self.warnings), ("notes", self.notes)):
            lines.append(f"\n{title}:")
            lines += [f"- {text}" for text in texts] or ["- (none)"]
        return "\n".join(lines) + "\n"


def export_speculators(head_dir: Path, target_dir: Path, out_dir: Path, *, speculative_tokens: int = 4) -> ExportReport:
    """Writes the eagle head at `head_dir` (made for the target at `target_dir`) to `out_dir` in the
    speculators EAGLE-3 format; returns the report (also written as export_report.json)."""
    if speculative_tokens < 1:
        raise ExportError(f"speculative_tokens must be >= 1, got {speculative_tokens}")
    head_dir, target_dir, out_dir = Path(head_dir), Path(target_dir), Path(out_dir)
    config = _eagle_config(head_dir)
    target_config = _target_config(target_dir)
    head_weights = load_file(str(head_dir / "model.safetensors"))
    lm_head = _target_lm_head(target_dir, target_config, config)
    report = ExportReport(out_dir=out_dir, source_version=draft_version(head_dir), vllm_loadable=False)
    tensors = _map_tensors(head_weights, lm_head, report)
    aux_ids = _aux_layer_ids(config, int(target_config["num_hidden_layers"]), report)
    report.vllm_loadable = not report.missing and not report.warnings
    speculators_config = _speculators_config(config, target_config, target_dir, aux_ids, speculative_tokens, report)
    _write(out_dir, tensors, speculators_config, report)
    log.info("exported head %s to %s (vLLM-loadable: %s)", report.source_version, out_dir, report.vllm_loadable)
    return report


def _eagle_config(head_dir: Path) -> EagleConfig:
    try:
        manifest = read_manifest(head_dir)
    except DraftFormatError as exc:
        raise ExportError(str(exc)) from None
    if not isinstance(manifest.draft, EagleConfig):
        raise ExportError(
            f"speculators export supports eagle heads; {head_dir} is a {manifest.draft.kind} draft. "
            "medusa/draft_model: not exported. This export targets EAGLE-3, the layout vLLM's speculators "
            "loader reads; a draft_model is an ordinary causal LM that vLLM takes as a separate draft model, "
            "and medusa heads have no EAGLE-3 counterpart"
        )
    if not (head_dir / "model.safetensors").is_file():
        raise ExportError(f"{head_dir} has no model.safetensors")
    return manifest.draft


def _target_config(target_dir: Path) -> dict[str, Any]:
    path = target_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{target_dir} is not a model directory: it has no config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return dict(data.get("text_config") or data) | {"architectures": data.get("architectures") or []}


def _weight_files(target_dir: Path) -> list[Path]:
    index = target_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [target_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(target_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{target_dir} has no safetensors weights")
    return files


def _target_lm_head(target_dir: Path, target_config: dict[str, Any], config: EagleConfig) -> torch.Tensor:
    """The target's output embedding, which our head shares (the input embedding when tied)."""
    names = ["lm_head.weight"]
    if target_config.get("tie_word_embeddings"):
        names.append("model.embed_tokens.weight")
    for path in _weight_files(target_dir):
        with safe_open(str(path), framework="pt") as weights:
            stored = set(weights.keys())
            found = [name for name in names if name in stored]
            if found:
                tensor = weights.get_tensor(found[0])
                break
    else:
        raise ExportError(f"no LM head ({' or '.join(names)}) in the weights of {target_dir}")
    expected = (config.vocab_size, config.hidden_size)
    if tuple(tensor.shape) != expected:
        raise ExportError(f"{target_dir} LM head is {tuple(tensor.shape)}; the head expects {expected}")
    return tensor


def _map_tensors(head: dict[str, torch.Tensor], lm_head: torch.Tensor, report: ExportReport) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in sorted(head.items()):
        if name in EXACT_NAMES:
            tensors[EXACT_NAMES[name]] = tensor.contiguous()
            report.mapped.append(TensorEntry(EXACT_NAMES[name], list(tensor.shape), f"copied from {name}"))
        else:
            reason = UNMAPPED_REASONS.get(name, "no EAGLE-3 counterpart known")
            report.unmapped.append(TensorEntry(name, list(tensor.shape), reason))
    vocab, hidden = lm_head.shape
    tensors["lm_head.weight"] = lm_head.to(head["final_norm.weight"].dtype).contiguous()
    tensors["d2t"] = torch.zeros(vocab, dtype=torch.int64)
    tensors["t2d"] = torch.ones(vocab, dtype=torch.bool)
    report.mapped += [
        TensorEntry("lm_head.weight", [vocab, hidden], "the target's LM head, which the head shares"),
        TensorEntry("d2t", [vocab], "zeros: draft vocabulary = target vocabulary"),
        TensorEntry("t2d", [vocab], "all true: every target token is in the draft vocabulary"),
    ]
    report.missing += [_missing_entry(name, module, head) for name, module in MISSING_TENSORS.items()]
    report.unmapped.append(TensorEntry("(residual stream)", [], RESIDUAL_NOTE))
    return tensors


def _missing_entry(name: str, module: str, head: dict[str, torch.Tensor]) -> TensorEntry:
    rows, columns = head[f"layer.{module}.weight"].shape
    detail = f"EAGLE-3's first layer needs [{rows}, {2 * columns}]; ours is [{rows}, {columns}] (see layer.{module})"
    return TensorEntry(name, [rows, 2 * columns], detail)


def _aux_layer_ids(config: EagleConfig, target_layers: int, report: ExportReport) -> list[int]:
    """vLLM records the aux state before layer i, i.e. the output of layer i - 1."""
    layers = list(config.feature_layers)
    aux_ids = [layer + 1 for layer in layers]
    if len(set(layers)) < len(layers):
        report.warnings.append(
            f"feature_layers {layers} repeat a layer: vLLM collects each aux layer once, so fc would get "
            f"{len(set(layers))} x hidden instead of 3 x hidden"
        )
    if max(aux_ids) > target_layers:
        report.warnings.append(f"feature layer {max(layers)} does not exist in a {target_layers}-layer target")
    elif max(aux_ids) == target_layers:
        report.notes.append(
            f"feature layer {max(layers)} is the target's last layer (aux id {max(aux_ids)}): current vLLM records "
            "it, releases that recorded aux states only before each layer do not"
        )
    return aux_ids


def _speculators_config(
    config: EagleConfig,
    target_config: dict[str, Any],
    target_dir: Path,
    aux_ids: list[int],
    speculative_tokens: int,
    report: ExportReport,
) -> dict[str, Any]:
    return {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "transformer_layer_config": _layer_config(config, target_config),
        "draft_vocab_size": config.vocab_size,
        "norm_before_residual": False,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": aux_ids,
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [
                {
                    "proposal_type": "greedy",
                    "speculative_tokens": speculative_tokens,
                    "verifier_accept_k": 1,
                    "accept_tolerance": 0.0,
                }
            ],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": str(target_dir.resolve()), "architectures": target_config["architectures"]},
        },
        "specwatch_export": {
            "source_version": report.source_version,
            "vllm_loadable": report.vllm_loadable,
            "missing_tensors": [entry.name for entry in report.missing],
            "warnings": report.warnings,
            "notes": report.notes,
            "report": REPORT_FILE,
        },
    }


def _layer_config(config: EagleConfig, target_config: dict[str, Any]) -> dict[str, Any]:
    """A LlamaConfig-like dict describing the head's one decoder layer (plain RoPE, no biases)."""
    return {
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": int(target_config.get("max_position_embeddings") or 4096),
        "vocab_size": config.vocab_size,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }


def _write(out_dir: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], report: ExportReport) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
