"""Runs under `.venv-compat/bin/python` (torch + speculators, no specwatch): the `speculators` library
as an independent EAGLE-3 implementation for tests/decoder/formats/test_speculators_compat.py.

    python speculators_side.py logits CHECKPOINT_DIR INPUTS.safetensors OUT.safetensors
    python speculators_side.py create VERIFIER_DIR OUT_DIR SPEC.json
    python speculators_side.py batch JOBS.json RESULTS.json

`batch` runs many cases in one process (one interpreter start and one import of speculators for a
whole test module): JOBS.json maps a case id to its steps, each `[command, path, path, path]` as
above, run in order; RESULTS.json maps each case id to null (every step ran) or the traceback of the
step that failed, so one case failing leaves the others to report for themselves.

`logits`: loads CHECKPOINT_DIR with `Eagle3DraftModel.from_pretrained`, runs its own `forward` for one
step (ttt_steps=1) on the saved `aux_states` [1, T, 3H] and `token_ids` [1, T], and saves the logits
its `lm_head` produced (captured by a forward hook: `forward` returns only the argmax tokens). It runs
speculators' "eager" attention (its float-mask path): on this CPU torch its default flex attention
(unfused, no torch.compile) and its "sdpa" path gave other numbers (max abs 0.06 on random weights,
position 0 included) unless a forward hook sat on the decoder layer; eager agrees with the EAGLE-3
definition written out by hand.
`create`: `Eagle3DraftModel.from_training_args` on a Llama layer config sized like the verifier, with
the ids, vocabulary and norm_before_residual of SPEC.json, every trainable weight redrawn at random
(norms around 1), then `save_pretrained`.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from speculators.models.eagle3 import Eagle3DraftModel, Eagle3SpeculatorConfig
from transformers import AutoConfig, LlamaConfig


def logits(checkpoint: Path, inputs_path: Path, out_path: Path) -> None:
    config = Eagle3SpeculatorConfig.from_pretrained(str(checkpoint))
    config.transformer_layer_config._attn_implementation = "eager"  # see the module docstring
    model = Eagle3DraftModel.from_pretrained(str(checkpoint), config=config).float().eval()
    inputs = load_file(str(inputs_path))
    captured: list[torch.Tensor] = []
    model.lm_head.register_forward_hook(lambda _m, _a, output: captured.append(output.detach()))
    time = inputs["token_ids"].shape[1]
    with torch.no_grad():
        model(
            hidden_states=inputs["aux_states"].float(),
            input_ids=inputs["token_ids"],
            document_ids=torch.zeros(1, time, dtype=torch.long),
            position_ids=torch.arange(time)[None],
            ttt_steps=1,
        )
    save_file({"logits": captured[0].contiguous()}, str(out_path))


def create(verifier: Path, out_dir: Path, spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    torch.manual_seed(spec["seed"])
    target = AutoConfig.from_pretrained(str(verifier))
    layer = LlamaConfig(
        vocab_size=target.vocab_size,
        hidden_size=target.hidden_size,
        intermediate_size=target.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=target.num_attention_heads,
        num_key_value_heads=target.num_key_value_heads,
        head_dim=target.hidden_size // target.num_attention_heads,
        rms_norm_eps=target.rms_norm_eps,
        max_position_embeddings=target.max_position_embeddings,
    )
    vocabulary = spec.get("draft_token_ids")
    t2d = d2t = None
    if vocabulary is not None:
        ids = torch.tensor(vocabulary, dtype=torch.long)
        t2d = torch.zeros(target.vocab_size, dtype=torch.bool)
        t2d[ids] = True
        d2t = ids - torch.arange(len(ids))
    model = Eagle3DraftModel.from_training_args(
        layer,
        t2d=t2d,
        d2t=d2t,
        verifier_name_or_path=str(verifier),
        draft_vocab_size=spec["draft_vocab_size"],
        norm_before_residual=spec["norm_before_residual"],
        ttt_steps=3,
        target_layer_ids=spec["target_layer_ids"],
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("fc.", "layers.")) or name == "norm.weight":
                centre = 1.0 if "norm" in name else 0.0
                parameter.copy_(centre + 0.1 * torch.randn_like(parameter))
    model.save_pretrained(str(out_dir))


COMMANDS = {"logits": logits, "create": create}


def batch(jobs_path: Path, results_path: Path) -> None:
    jobs: dict[str, list[list[str]]] = json.loads(jobs_path.read_text())
    results: dict[str, str | None] = {}
    for case, steps in jobs.items():
        try:
            for command, *paths in steps:
                COMMANDS[command](*(Path(p) for p in paths))
            results[case] = None
        except Exception:
            results[case] = traceback.format_exc()
    results_path.write_text(json.dumps(results))


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    {**COMMANDS, "batch": batch}[command](*(Path(p) for p in paths))
