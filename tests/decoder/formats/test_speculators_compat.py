"""vLLM's `speculators` library as an independent loader and producer of EAGLE-3 heads.

Its own `Eagle3DraftModel` (in `.venv-compat`, built by `make compat`; speculators pins an older
transformers than ours) loads specwatch exports and computes logits on fixed inputs; heads it creates
and saves import into specwatch. Both sides must agree within 1e-4. Skipped when `.venv-compat` is
absent, unless SPECWATCH_REQUIRE_COMPAT=1 (CI), which makes its absence a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from decoder import TargetModel, load_draft
from decoder.drafts import Eagle3Head
from decoder.formats.speculators import export_speculators_head
from tests.decoder.formats.conftest import fixed_inputs, random_eagle3

REPOSITORY = Path(__file__).resolve().parents[3]
COMPAT_PYTHON = REPOSITORY / ".venv-compat" / "bin" / "python"
SIDE_SCRIPT = Path(__file__).with_name("speculators_side.py")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def compat_python() -> Path:
    if not COMPAT_PYTHON.is_file():
        reason = f"{COMPAT_PYTHON} is absent: run `make compat` to build the speculators environment"
        if os.environ.get("SPECWATCH_REQUIRE_COMPAT") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return COMPAT_PYTHON


def run_side(python: Path, *arguments: Path) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(python), str(SIDE_SCRIPT), *map(str, arguments)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def speculators_logits(
    python: Path, checkpoint: Path, random_target: TargetModel, work: Path
) -> tuple[torch.Tensor, ...]:
    """(speculators' logits, aux states, token ids) on the fixed inputs."""
    aux, tokens = fixed_inputs(random_target)
    save_file({"aux_states": aux.contiguous(), "token_ids": tokens.contiguous()}, str(work / "inputs.safetensors"))
    run_side(python, Path("logits"), checkpoint, work / "inputs.safetensors", work / "logits.safetensors")
    return load_file(str(work / "logits.safetensors"))["logits"], aux, tokens


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"norm_before_residual": False}, id="norm-after-residual"),
        pytest.param({"norm_before_residual": True}, id="norm-before-residual"),
        pytest.param({"norm_before_residual": False, "draft_vocab_size": 21}, id="reduced-vocabulary"),
    ],
)
def test_speculators_loads_our_export(
    config: dict[str, object], compat_python: Path, random_target: TargetModel, tmp_path: Path
) -> None:
    head = random_eagle3(random_target, **config)
    export_speculators_head(head, random_target, tmp_path / "export")
    theirs, aux, tokens = speculators_logits(compat_python, tmp_path / "export", random_target, tmp_path)
    with torch.no_grad():
        ours = head(aux, tokens)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max() <= TOLERANCE


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"norm_before_residual": False, "draft_vocab_size": 48}, id="full-vocabulary"),
        pytest.param(
            {"norm_before_residual": True, "draft_vocab_size": 6, "draft_token_ids": [2, 5, 11, 17, 30, 47]},
            id="norm-before-residual-reduced",
        ),
    ],
)
def test_a_head_speculators_created_imports(
    spec: dict[str, object], compat_python: Path, random_target: TargetModel, target_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(spec | {"seed": 3, "target_layer_ids": [1, 2, 3]}))
    run_side(compat_python, Path("create"), target_dir, tmp_path / "created", tmp_path / "spec.json")
    head = load_draft(tmp_path / "created", random_target)
    assert isinstance(head, Eagle3Head)
    assert head.eagle3_config.norm_before_residual is spec["norm_before_residual"]
    assert head.eagle3_config.aux_layer_ids == (1, 2, 3)
    theirs, aux, tokens = speculators_logits(compat_python, tmp_path / "created", random_target, tmp_path)
    with torch.no_grad():
        ours = head(aux, tokens)
    assert (theirs - ours).abs().max() <= TOLERANCE
