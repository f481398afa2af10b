"""The head registry on real tiny drafts: versions, seed, switch, rollback, history, atomicity, locking."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from decoder import DRAFT_KINDS, draft_version
from retrain.registry import HeadRegistry, RegistryError, head_version, registered_version

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def eagle(reference_models: Path) -> Path:
    return reference_models / "drafts" / "eagle"


@pytest.fixture
def retrained(eagle: Path, tmp_path: Path) -> Path:
    """A second eagle head: the reference one with perturbed weights, plus a stray file."""
    directory = tmp_path / "retrained"
    directory.mkdir()
    shutil.copyfile(eagle / "config.json", directory / "config.json")
    weights = load_file(str(eagle / "model.safetensors"))
    weights["fuse.weight"] = weights["fuse.weight"] + np.float32(0.01)
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "training.log").write_text("not part of the draft\n")
    return directory


@pytest.fixture
def registry(tmp_path: Path) -> HeadRegistry:
    return HeadRegistry(tmp_path / "heads")


def test_version_is_the_drafts_content_hash(reference_models: Path, registry: HeadRegistry) -> None:
    for kind in DRAFT_KINDS:
        directory = reference_models / "drafts" / kind
        head = registry.register(directory, parent=None, source=f"test {kind}")
        assert head.kind == kind
        assert head.version == draft_version(directory) == draft_version(registry.draft_dir(head.version))


def test_seed_goes_live_once(eagle: Path, retrained: Path, registry: HeadRegistry) -> None:
    assert registry.live() is None and registry.live_path() is None
    seed = registry.ensure_seed(eagle)
    assert seed.state == "live" and seed.parent is None and seed.deployed_at is not None
    assert seed.source == f"seed: {eagle}"
    assert os.readlink(registry.root / "live") == f"versions/{seed.version}/draft"
    assert registry.live_path() == (registry.root / "versions" / seed.version / "draft").resolve()
    assert registry.ensure_seed(retrained).version == seed.version  # a live head exists: no change
    assert [entry["to"] for entry in registry.history()] == [seed.version]
    assert registry.history()[0]["from"] is None and registry.history()[0]["reason"] == "seed"


def test_a_registered_head_is_named_by_the_registry_without_reading_its_weights(
    eagle: Path, retrained: Path, registry: HeadRegistry
) -> None:
    seed = registry.ensure_seed(eagle)
    live_through_pointer = registry.root / "live"
    assert head_version(live_through_pointer) == head_version(registry.draft_dir(seed.version)) == seed.version
    weights = registry.draft_dir(seed.version) / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"not read")  # the name comes from head.json, hashed once at registration
    assert head_version(live_through_pointer) == seed.version != draft_version(live_through_pointer)


def test_a_directory_outside_a_registry_is_named_by_its_content_hash(
    eagle: Path, retrained: Path, registry: HeadRegistry, tmp_path: Path
) -> None:
    assert registered_version(eagle) is None and head_version(eagle) == draft_version(eagle)
    seed = registry.ensure_seed(eagle)
    lookalike = tmp_path / "copy" / "versions" / seed.version / "draft"
    shutil.copytree(registry.draft_dir(seed.version), lookalike)
    assert registered_version(lookalike) is None  # no head.json beside it
    manifest = registry.versions_dir / seed.version / "head.json"
    shutil.copyfile(manifest, lookalike.parent / "head.json")
    assert registered_version(lookalike) == seed.version
    other = registry.register(retrained, parent=seed.version, source="retrain job 1")
    shutil.copyfile(registry.versions_dir / other.version / "head.json", lookalike.parent / "head.json")
    assert registered_version(lookalike) is None  # head.json names another version: hashed instead
    assert head_version(lookalike) == draft_version(lookalike) == seed.version


def test_seed_needs_a_draft(registry: HeadRegistry) -> None:
    with pytest.raises(RegistryError, match="no seed draft configured"):
        registry.ensure_seed(None)


def test_register_copies_only_the_draft_read_only(retrained: Path, registry: HeadRegistry) -> None:
    head = registry.register(retrained, parent=None, source="retrain job 1", metrics={"alpha": 0.7})
    stored = registry.draft_dir(head.version)
    assert sorted(p.name for p in stored.iterdir()) == ["config.json", "model.safetensors"]
    assert all(p.stat().st_mode & 0o222 == 0 for p in stored.iterdir())
    assert head.version == draft_version(stored) != draft_version(retrained)  # the stray file is not hashed
    assert registry.get(head.version).metrics == {"alpha": 0.7}


def test_identical_content_registers_once(eagle: Path, tmp_path: Path, registry: HeadRegistry) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(eagle, copy)
    first = registry.register(eagle, parent=None, source="one")
    second = registry.register(copy, parent=None, source="two")
    assert second.version == first.version and second.source == "one"
    assert len(registry.list()) == 1


def test_switch_rollback_and_history(eagle: Path, retrained: Path, registry: HeadRegistry) -> None:
    seed = registry.ensure_seed(eagle)
    new = registry.register(retrained, parent=seed.version, source="retrain job 2", corpus={"content_hash": "ab"})
    assert [h.version for h in registry.list()] == [new.version, seed.version]  # newest first
    assert registry.previous_live() is None

    assert registry.switch(new.version, reason="gate passed") == seed.version
    live = registry.live()
    assert live is not None and live.version == new.version and live.state == "live" and live.deployed_at
    assert registry.get(seed.version).state == "retired"
    assert registry.previous_live() == seed.version

    assert registry.switch(seed.version[:6], reason="rollback", previous_state="rolled_back") == new.version
    assert registry.get(new.version).state == "rolled_back"
    assert registry.get(seed.version).state == "live"
    assert registry.previous_live() is None  # the only earlier head was rolled back from
    history = registry.history()
    assert [(e["from"], e["to"], e["reason"]) for e in history] == [
        (None, seed.version, "seed"),
        (seed.version, new.version, "gate passed"),
        (new.version, seed.version, "rollback"),
    ]
    assert registry.switch(seed.version, reason="again") == seed.version  # already live: no-op
    assert len(registry.history()) == 3


def test_update_rewrites_the_manifest(eagle: Path, registry: HeadRegistry) -> None:
    head = registry.register(eagle, parent=None, source="test")
    updated = registry.update(head.version, gate={"passed": False, "reason": "alpha +0.001"}, state="refused")
    assert registry.get(head.version) == updated and updated.state == "refused"
    with pytest.raises(RegistryError, match="invalid update"):
        registry.update(head.version, state="exploded")
    with pytest.raises(RegistryError, match="cannot change"):
        registry.update(head.version, version="0" * 16)


def test_clear_errors(eagle: Path, retrained: Path, tmp_path: Path, registry: HeadRegistry) -> None:
    head = registry.ensure_seed(eagle)
    other = registry.register(retrained, parent=head.version, source="t")
    with pytest.raises(RegistryError, match="unknown head version"):
        registry.get("0123456789abcdef")
    with pytest.raises(RegistryError, match="not a head version"):
        registry.get("../etc")
    for name in ("aaa0000000000000", "aaa1111111111111"):
        (registry.root / "versions" / name).mkdir()
        (registry.root / "versions" / name / "head.json").write_text("{}")
    with pytest.raises(RegistryError, match="ambiguous"):
        registry.get("aaa")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match=r"no config\.json"):
        registry.register(empty, parent=None, source="test")
    shutil.rmtree(registry.root / "versions" / head.version)
    with pytest.raises(RegistryError, match="missing version"):
        registry.live()
    with pytest.raises(RegistryError, match="missing version"):
        registry.ensure_seed(eagle)
    assert registry.switch(other.version, reason="repair") is None  # a switch repairs a dangling pointer
    assert registry.live_path() == registry.draft_dir(other.version)


def test_a_failed_register_leaves_no_version(
    eagle: Path, registry: HeadRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(directory: Path) -> str:
        raise RuntimeError("disk gone")

    monkeypatch.setattr("retrain.registry.draft_version", crash)
    with pytest.raises(RuntimeError, match="disk gone"):
        registry.register(eagle, parent=None, source="test")
    assert registry.list() == []
    assert not (registry.root / ".staging").exists() or not any((registry.root / ".staging").iterdir())


def test_live_pointer_always_resolves_to_a_complete_version(
    eagle: Path, retrained: Path, registry: HeadRegistry
) -> None:
    versions = {registry.ensure_seed(eagle).version, registry.register(retrained, parent=None, source="t").version}
    order = sorted(versions)
    done = threading.Event()

    def keep_switching() -> None:
        for index in range(60):
            registry.switch(order[index % 2], reason=f"switch {index}")
        done.set()

    switcher = threading.Thread(target=keep_switching)
    switcher.start()
    reads = 0
    while not done.is_set():
        path = registry.live_path()
        assert path is not None and path.parent.name in versions
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
        reads += 1
    switcher.join()
    assert reads > 0


SWITCHER = """
import sys
from pathlib import Path
from retrain.registry import HeadRegistry
registry = HeadRegistry(Path(sys.argv[1]))
for index in range(int(sys.argv[4])):
    registry.switch(sys.argv[2 + index % 2], reason=f"{sys.argv[5]} {index}")
"""


def test_two_processes_switching_keep_history_consistent(eagle: Path, retrained: Path, registry: HeadRegistry) -> None:
    first = registry.ensure_seed(eagle).version
    second = registry.register(retrained, parent=first, source="t").version
    switches = 25
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SWITCHER, str(registry.root), a, b, str(switches), name],
            cwd=REPO_ROOT,
        )
        for a, b, name in ((first, second, "p1"), (second, first, "p2"))
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    history = registry.history()
    assert 1 < len(history) <= 1 + 2 * switches  # a switch to the head already live writes no line
    for before, after in itertools.pairwise(history):
        assert after["from"] == before["to"] != after["to"]  # each switch saw the previous one complete
    live = registry.live_version()
    assert live == history[-1]["to"]
    assert [h.version for h in registry.list() if h.state == "live"] == [live]


def test_an_mtp_layer_is_registered_without_the_target_that_carries_it(
    reference_models: Path, registry: HeadRegistry
) -> None:
    from safetensors import safe_open

    target_dir = reference_models / "target"
    seed = registry.ensure_seed(target_dir)
    stored = registry.draft_dir(seed.version)
    assert seed.kind == "mtp"
    with safe_open(str(stored / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as handle:
        layers = {name.split(".")[2] for name in handle.keys() if name.startswith("model.layers.")}  # noqa: SIM118
    prefix = f"model.layers.{len(layers) - 1}."  # the MTP layer follows the decoder layers
    assert names and all(name.startswith(prefix) for name in names)
    assert not any(name.endswith(("embed_tokens.weight", "shared_head.head.weight")) for name in names)
    assert (stored / "model.safetensors").stat().st_size < (target_dir / "model.safetensors").stat().st_size / 2
    assert head_version(registry.root / "live") == seed.version == draft_version(stored)
