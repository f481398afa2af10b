"""vLLM's `speculators` library as an independent loader and producer of EAGLE-3 heads.

Its own `Eagle3DraftModel` (in `.venv-compat`, built by `make compat`; speculators pins an older
transformers than ours) loads specwatch exports and computes logits on fixed inputs; heads it creates
and saves import into specwatch. Both sides must agree within 1e-4. Skipped when `.venv-compat` is
absent, unless SPECWATCH_REQUIRE_COMPAT=1 (CI), which makes its absence a failure.

The speculators side of every case runs in one subprocess per module (`speculators_side.py batch`:
one interpreter start and one import of speculators and transformers instead of one per step); it
reports per case, and each test checks its own case.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
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
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


EXPORTED = {
    "norm-after-residual": {"norm_before_residual": False},
    "norm-before-residual": {"norm_before_residual": True},
    "reduced-vocabulary": {"norm_before_residual": False, "draft_vocab_size": 21},
}
"""Heads we create and export; speculators loads them."""

CREATED: dict[str, dict[str, object]] = {
    "full-vocabulary": {"norm_before_residual": False, "draft_vocab_size": 48},
    "norm-before-residual-reduced": {
        "norm_before_residual": True,
        "draft_vocab_size": 6,
        "draft_token_ids": [2, 5, 11, 17, 30, 47],
    },
}
"""Heads speculators creates and saves; we import them."""


@dataclass
class SpeculatorsSide:
    """What one batched run of speculators_side.py left: per case its logits on the fixed inputs or
    the traceback of the step that failed."""

    work: Path
    errors: dict[str, str | None]
    exported_heads: dict[str, Eagle3Head]
    aux: torch.Tensor
    tokens: torch.Tensor

    def case_dir(self, kind: str, case: str) -> Path:
        return self.work / kind / case

    def logits(self, kind: str, case: str) -> torch.Tensor:
        """speculators' logits on the fixed inputs for one case; a failed case fails its test alone."""
        error = self.errors.get(f"{kind}/{case}", "the batch did not report this case")
        if error is not None:
            pytest.fail(f"speculators side of {kind}/{case} failed:\n{error[-4000:]}")
        return load_file(str(self.case_dir(kind, case) / "logits.safetensors"))["logits"]


@pytest.fixture(scope="module")
def speculators_side(
    compat_python: Path, random_target: TargetModel, target_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> SpeculatorsSide:
    work = tmp_path_factory.mktemp("speculators-compat")
    aux, tokens = fixed_inputs(random_target)
    inputs = work / "inputs.safetensors"
    save_file({"aux_states": aux.contiguous(), "token_ids": tokens.contiguous()}, str(inputs))
    side = SpeculatorsSide(work, {}, {}, aux, tokens)
    jobs: dict[str, list[list[str]]] = {}
    for case, config in EXPORTED.items():
        directory = side.case_dir("exported", case)
        head = random_eagle3(random_target, **config)
        export_speculators_head(head, random_target, directory / "export")
        side.exported_heads[case] = head
        logits = ["logits", str(directory / "export"), str(inputs), str(directory / "logits.safetensors")]
        jobs[f"exported/{case}"] = [logits]
    for case, spec in CREATED.items():
        directory = side.case_dir("created", case)
        directory.mkdir(parents=True)
        (directory / "spec.json").write_text(json.dumps(spec | {"seed": 3, "target_layer_ids": [1, 2, 3]}))
        create = ["create", str(target_dir), str(directory / "created"), str(directory / "spec.json")]
        logits = ["logits", str(directory / "created"), str(inputs), str(directory / "logits.safetensors")]
        jobs[f"created/{case}"] = [create, logits]
    (work / "jobs.json").write_text(json.dumps(jobs))
    run_side(compat_python, Path("batch"), work / "jobs.json", work / "results.json")
    side.errors = json.loads((work / "results.json").read_text())
    return side


@pytest.mark.parametrize("case", EXPORTED)
def test_speculators_loads_our_export(case: str, speculators_side: SpeculatorsSide) -> None:
    head = speculators_side.exported_heads[case]
    theirs = speculators_side.logits("exported", case)
    with torch.no_grad():
        ours = head(speculators_side.aux, speculators_side.tokens)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max() <= TOLERANCE


@pytest.mark.parametrize("case", CREATED)
def test_a_head_speculators_created_imports(
    case: str, speculators_side: SpeculatorsSide, random_target: TargetModel
) -> None:
    spec = CREATED[case]
    theirs = speculators_side.logits("created", case)
    head = load_draft(speculators_side.case_dir("created", case) / "created", random_target)
    assert isinstance(head, Eagle3Head)
    assert head.eagle3_config.norm_before_residual is spec["norm_before_residual"]
    assert head.eagle3_config.aux_layer_ids == (1, 2, 3)
    with torch.no_grad():
        ours = head(speculators_side.aux, speculators_side.tokens)
    assert (theirs - ours).abs().max() <= TOLERANCE
