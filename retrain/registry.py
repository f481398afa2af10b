"""The head registry: every draft head ever deployed or tried, and an atomic pointer to the live one.

    <root>/versions/<version>/draft/     the draft's files, read-only once registered
    <root>/versions/<version>/head.json  a HeadManifest: lineage, corpus, metrics, gate decision, state
    <root>/live -> versions/<version>/draft
    <root>/history.jsonl                 one line per switch: {at, from, to, reason}

A version is the content hash of its draft directory (`draft_version`, the same hash replay results
are keyed by), so a head has one name everywhere. Mutations hold an exclusive lock (<root>/.lock);
readers take none: versions appear by one rename and the pointer changes by one rename, so a reader
sees the old state or the new one, never half of either.

    registry = HeadRegistry(config.heads_dir)
    seed = registry.ensure_seed(config.models.draft)
    head = registry.register(new_draft_dir, parent=seed.version, source="retrain job 7")
    previous = registry.switch(head.version, reason="gate passed")
    registry.switch(previous, reason="rollback", previous_state="rolled_back")
"""

from __future__ import annotations

import builtins
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from decoder.errors import DraftFormatError
from decoder.files import draft_version, write_atomically

log = logging.getLogger(__name__)

HeadState = Literal["candidate", "live", "retired", "refused", "rolled_back"]

MANIFEST_FILE = "config.json"  # decoder.drafts.MANIFEST_FILE (not imported: that pulls in torch)
SPECWATCH_DRAFT_FILES = ("config.json", "model.safetensors")
HEAD_FILE = "head.json"
VERSION_LENGTH = 16
VERSION_PREFIX = re.compile(r"^[0-9a-f]{1,16}$")


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says why and names the version or path."""


class HeadManifest(BaseModel):
    """head.json: what a registered head is, where it came from and what happened to it."""

    version: str = Field(pattern=r"^[0-9a-f]{16}$", description="draft_version() of the head's draft directory")
    kind: str = Field(min_length=1, description="draft kind: eagle, medusa or draft_model")
    parent: str | None = Field(default=None, description="version this head was trained from; None for a seed")
    created_at: datetime = Field(description="when it was registered (UTC)")
    source: str = Field(min_length=1, description='where it came from: "seed: <path>", "retrain job <id>", ...')
    corpus: dict[str, Any] | None = Field(default=None, description="training corpus: content_hash, counts, range")
    metrics: dict[str, Any] = Field(default_factory=dict, description="evaluation metrics")
    gate: dict[str, Any] | None = Field(default=None, description="the gate's decision, when one was made")
    state: HeadState = Field(default="candidate", description="candidate, live, retired, refused or rolled_back")
    deployed_at: datetime | None = Field(default=None, description="when it last became live (UTC)")
    notes: str = Field(default="", description="free-form operator notes")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def draft_files(draft_dir: Path) -> list[Path]:
    """The files that make up a saved draft: config.json + model.safetensors for a specwatch draft,
    every top-level file of a plain causal LM directory (its tokenizer travels with it)."""
    if _draft_config(draft_dir).get("format") == "specwatch-draft":
        missing = [name for name in SPECWATCH_DRAFT_FILES if not (draft_dir / name).is_file()]
        if missing:
            raise RegistryError(f"{draft_dir} is incomplete: missing {', '.join(missing)}")
        return [draft_dir / name for name in SPECWATCH_DRAFT_FILES]
    return sorted(p for p in draft_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def _draft_config(draft_dir: Path) -> dict[str, Any]:
    if not (draft_dir / MANIFEST_FILE).is_file():
        raise RegistryError(f"{draft_dir} is not a draft directory: it has no {MANIFEST_FILE}")
    try:
        data = json.loads((draft_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read {draft_dir / MANIFEST_FILE}: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{draft_dir / MANIFEST_FILE} is not a JSON object")
    return data


def draft_kind(draft_dir: Path) -> str:
    """The kind of a saved draft: an engine format's kind (decoder.formats), else read from a specwatch
    manifest (validated with decoder's own model). Imports the draft registry (torch) only here."""
    from decoder.drafts import read_manifest
    from decoder.formats import detect_format

    engine_format = detect_format(draft_dir)
    if engine_format is not None:
        return engine_format.kinds[0]
    data = _draft_config(draft_dir)
    if data.get("format") != "specwatch-draft":
        raise RegistryError(f"{draft_dir / MANIFEST_FILE} is neither a specwatch draft nor a head format's config")
    try:
        return str(read_manifest(draft_dir).draft.kind)
    except DraftFormatError as exc:
        raise RegistryError(str(exc)) from None


def registered_version(draft_dir: Path) -> str | None:
    """The version of a draft directory that lies in a head registry (`<root>/versions/<version>/draft`,
    also through the live pointer), read from its head.json; None for a directory outside a registry."""
    resolved = Path(draft_dir).resolve()
    version_dir = resolved.parent
    if resolved.name != "draft" or version_dir.parent.name != "versions" or len(version_dir.name) != VERSION_LENGTH:
        return None
    try:
        head = HeadManifest.model_validate_json((version_dir / HEAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None
    return head.version if head.version == version_dir.name else None


def head_version(draft_dir: Path) -> str:
    """The version a draft is known by: a registered head's is read from the registry, which hashed its
    files once when it registered them (read-only since); any other directory is hashed (`draft_version`).
    A production head is gigabytes: bench/head_version.py measures what reading instead of hashing saves."""
    return registered_version(draft_dir) or draft_version(draft_dir)


class HeadRegistry:
    """Versioned draft heads under `root` with an atomic live pointer (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.live_link = self.root / "live"
        self.history_file = self.root / "history.jsonl"
        self.lock_file = self.root / ".lock"
        self.staging_dir = self.root / ".staging"

    # -- reading (no lock) ------------------------------------------------------------------

    def get(self, version: str) -> HeadManifest:
        """The head with this version or unique version prefix."""
        return self._read_manifest(self._resolve(version))

    def list(self) -> builtins.list[HeadManifest]:
        """All registered heads, newest first."""
        if not self.versions_dir.is_dir():
            return []
        heads = [self._read_manifest(p.name) for p in self.versions_dir.iterdir() if (p / HEAD_FILE).is_file()]
        return sorted(heads, key=lambda head: head.created_at, reverse=True)

    def live_version(self) -> str | None:
        """The version the live pointer names, None without one; RegistryError if it dangles."""
        try:
            target = os.readlink(self.live_link)
        except FileNotFoundError:
            return None
        parts = Path(target).parts
        if len(parts) != 3 or parts[0] != "versions" or parts[2] != "draft":
            raise RegistryError(f"live pointer {self.live_link} -> {target} is not versions/<version>/draft")
        if not (self.versions_dir / parts[1] / HEAD_FILE).is_file():
            raise RegistryError(
                f"live pointer {self.live_link} points at missing version {parts[1]} "
                "(switching to a registered version repairs it)"
            )
        return parts[1]

    def live(self) -> HeadManifest | None:
        version = self.live_version()
        return None if version is None else self._read_manifest(version)

    def live_path(self) -> Path | None:
        """The live head's draft directory, resolved: a loader that opens it keeps reading one version
        even if the pointer switches meanwhile."""
        version = self.live_version()
        return None if version is None else self.draft_dir(version)

    def draft_dir(self, version: str) -> Path:
        return (self.versions_dir / self._resolve(version) / "draft").resolve()

    def history(self) -> builtins.list[dict[str, Any]]:
        """Switches, oldest first."""
        if not self.history_file.is_file():
            return []
        lines = self.history_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def previous_live(self) -> str | None:
        """The most recent head that was live before the current one and was not rolled back from:
        what `specwatch rollback` without an argument returns to."""
        current = self.live_version()
        for entry in reversed(self.history()):
            candidate = entry.get("from")
            if not candidate or candidate == current or not (self.versions_dir / candidate).is_dir():
                continue
            if self._read_manifest(candidate).state != "rolled_back":
                return str(candidate)
        return None

    # -- writing (under the lock) -----------------------------------------------------------

    def register(
        self,
        draft_dir: Path,
        *,
        parent: str | None,
        source: str,
        corpus: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        state: HeadState = "candidate",
    ) -> HeadManifest:
        """Copies a saved draft in as a new version; identical content returns the existing version."""
        draft_dir = Path(draft_dir)
        with self._locked():
            return self._register(draft_dir, parent, source, corpus, metrics or {}, state)

    def ensure_seed(self, draft_dir: Path | None) -> HeadManifest:
        """The live head; when there is none, registers `draft_dir` (models.draft) as the seed and makes
        it live."""
        with self._locked():
            live = self.live()
            if live is not None:
                return live
            if draft_dir is None:
                raise RegistryError(f"no live head in {self.root} and no seed draft configured (models.draft)")
            seed = self._register(Path(draft_dir), None, f"seed: {draft_dir}", None, {}, "candidate")
            self._switch(seed.version, "seed", "retired")
            log.info("seeded head registry %s with %s (%s)", self.root, seed.version, draft_dir)
            return self._read_manifest(seed.version)

    def switch(self, version: str, *, reason: str, previous_state: HeadState = "retired") -> str | None:
        """Makes `version` live; returns the version that was live before (now `previous_state`)."""
        with self._locked():
            return self._switch(self._resolve(version), reason, previous_state)

    def update(self, version: str, /, **fields: Any) -> HeadManifest:
        """Changes fields of a head's manifest (an atomic rewrite of head.json)."""
        with self._locked():
            return self._update(self._resolve(version), **fields)

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            shutil.rmtree(self.staging_dir, ignore_errors=True)  # left by a crash; nobody else is writing
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _resolve(self, version: str) -> str:
        """A full version from a version or unique prefix."""
        if not VERSION_PREFIX.match(version):
            raise RegistryError(f"{version!r} is not a head version (1-16 lowercase hex digits)")
        if (self.versions_dir / version / HEAD_FILE).is_file():
            return version
        known = [p.name for p in self.versions_dir.iterdir()] if self.versions_dir.is_dir() else []
        matches = sorted(name for name in known if version and name.startswith(version))
        if not matches:
            raise RegistryError(f"unknown head version {version!r} in {self.root}")
        if len(matches) > 1:
            raise RegistryError(f"head version prefix {version!r} is ambiguous: {', '.join(matches)}")
        return matches[0]

    def _read_manifest(self, version: str) -> HeadManifest:
        path = self.versions_dir / version / HEAD_FILE
        try:
            return HeadManifest.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"unknown head version {version!r} in {self.root}") from None
        except ValidationError as exc:
            raise RegistryError(f"{path} is not a valid head manifest: {exc}") from None

    def _write_manifest(self, head: HeadManifest) -> None:
        path = self.versions_dir / head.version / HEAD_FILE
        write_atomically(path, (head.model_dump_json(indent=2) + "\n").encode("utf-8"))
        _fsync_dir(path.parent)

    def _stage_draft(self, draft_dir: Path, staged: Path) -> None:
        """Writes the draft's files into staged/draft, synced and read-only: the files its engine format
        says make up the head (an MTP layer, not the target that carries it), else its own files."""
        from decoder.formats import detect_format

        target = staged / "draft"
        engine_format = detect_format(draft_dir)
        if engine_format is not None and engine_format.stage is not None:
            engine_format.stage(draft_dir, target)
        else:
            target.mkdir(parents=True)
            for path in draft_files(draft_dir):
                shutil.copyfile(path, target / path.name)
        for copy in target.iterdir():
            with copy.open("rb") as handle:
                os.fsync(handle.fileno())
            copy.chmod(0o444)
        _fsync_dir(target)

    def _register(
        self,
        draft_dir: Path,
        parent: str | None,
        source: str,
        corpus: dict[str, Any] | None,
        metrics: dict[str, Any],
        state: HeadState,
    ) -> HeadManifest:
        kind = draft_kind(draft_dir)
        staged = self.staging_dir / uuid.uuid4().hex
        try:
            self._stage_draft(draft_dir, staged)
            version = draft_version(staged / "draft")
            if (self.versions_dir / version).exists():
                log.info("%s is already registered as %s", draft_dir, version)
                return self._read_manifest(version)
            head = HeadManifest(
                version=version,
                kind=kind,
                parent=parent,
                created_at=utcnow(),
                source=source,
                corpus=corpus,
                metrics=metrics,
                state=state,
            )
            write_atomically(staged / HEAD_FILE, (head.model_dump_json(indent=2) + "\n").encode("utf-8"))
            os.rename(staged, self.versions_dir / version)
            _fsync_dir(self.versions_dir)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        log.info("registered %s head %s from %s (%s)", kind, version, draft_dir, source)
        return head

    def _point_live_at(self, version: str) -> None:
        temporary = self.root / f".live.{uuid.uuid4().hex}.tmp"
        os.symlink(Path("versions") / version / "draft", temporary)
        os.replace(temporary, self.live_link)
        _fsync_dir(self.root)

    def _append_history(self, entry: dict[str, Any]) -> None:
        with self.history_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _switch(self, version: str, reason: str, previous_state: HeadState) -> str | None:
        self._read_manifest(version)  # a complete version, or RegistryError
        previous = self._live_before_switch()
        if previous == version:
            log.info("head %s is already live; nothing to switch", version)
            return previous
        now = utcnow()
        self._point_live_at(version)
        self._append_history({"at": now.isoformat(), "from": previous, "to": version, "reason": reason})
        self._update(version, state="live", deployed_at=now)
        if previous is not None:
            self._update(previous, state=previous_state)
        log.info("live head %s -> %s (%s)", previous, version, reason)
        return previous

    def _live_before_switch(self) -> str | None:
        """The live version; a dangling pointer counts as none, so that a switch repairs it."""
        try:
            return self.live_version()
        except RegistryError as exc:
            log.warning("%s; replacing it", exc)
            return None

    def _update(self, version: str, /, **fields: Any) -> HeadManifest:
        if fields.get("version", version) != version:
            raise RegistryError(f"a head's version cannot change ({version} -> {fields['version']})")
        current = self._read_manifest(version)
        try:
            head = HeadManifest.model_validate({**current.model_dump(), **fields})
        except ValidationError as exc:
            raise RegistryError(f"invalid update of head {version}: {exc}") from None
        self._write_manifest(head)
        return head
