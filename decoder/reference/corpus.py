"""Real text for the offline reference models: chatterbot-corpus dialogs and Python stdlib source.

The chatterbot-corpus package ships multilingual dialogs as YAML (data/<language>/*.yml, each a
list of conversations, each a list of turns). The decoder reads only the small subset of YAML
those files use (see `parse_conversations`), so it needs no YAML library. Code documents are
chunks of the running Python's standard library.

Every document is a chat (user / assistant turns) and belongs to a split by a hash of its text,
so the same installation always yields the same train and held-out sets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CHATTERBOT_LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "ja": "japanese",
    "es": "spanish",
    "de": "german",
    "fr": "french",
    "ru": "russian",
    "pt": "portuguese",
    "it": "italian",
}
CODE = "code"
HELDOUT_SHARE = 10  # one document in this many is held out


@dataclass(frozen=True)
class Document:
    """A chat-shaped training or evaluation document."""

    language: str
    messages: tuple[tuple[str, str], ...]

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def heldout(self) -> bool:
        digest = hashlib.sha256(json.dumps(self.messages, ensure_ascii=False).encode("utf-8")).digest()
        return digest[0] % HELDOUT_SHARE == 0


def chatterbot_data_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the chatterbot-corpus package is not installed")
    return Path(spec.origin).parent / "data"


def _unquote_single(text: str) -> str:
    return text.replace("''", "'")


def _fold(lines: Sequence[str]) -> str:
    """YAML line folding of a flow scalar: single breaks become spaces, blank lines newlines."""
    parts: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            parts.append("\n")
        elif parts and parts[-1] != "\n":
            parts.append(" " + stripped)
        else:
            parts.append(stripped)
    return "".join(parts)


def _scalar(first: str, continuation: Sequence[str]) -> str:
    """The value of a list item whose text starts with `first` and continues over more lines."""
    if first.startswith("|"):
        lines = list(continuation)
        while lines and not lines[-1].strip():
            lines.pop()
        indent = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()), default=0)
        text = "\n".join(line[indent:] for line in lines)
        return text if first.endswith("-") else text + "\n"
    if first.startswith("'"):
        body = _fold([first[1:], *continuation])
        return _unquote_single(body[: body.rstrip().rfind("'")] if body.rstrip().endswith("'") else body)
    if first.startswith('"'):
        body = _fold([first[1:], *continuation]).rstrip()
        decoded: str = json.loads('"' + body[:-1] + '"')
        return decoded
    return _fold([first, *continuation]).strip()


def parse_conversations(text: str) -> list[list[str]]:
    """Conversations of a chatterbot-corpus YAML file (`conversations: - - turn ...`)."""
    conversations: list[list[str]] = []
    in_conversations = False
    item: tuple[str, list[str]] | None = None

    def close_item() -> None:
        if item is not None and conversations:
            conversations[-1].append(_scalar(item[0], item[1]))

    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.startswith(" ") and not line.startswith("-") and line.strip():
            close_item()
            item = None
            in_conversations = line.strip() == "conversations:"
            continue
        if not in_conversations:
            continue
        if line.startswith("- "):
            # "- - turn" opens a conversation; a bare "- turn" (a malformed entry in a few files)
            # is read as a conversation that starts with that turn
            close_item()
            conversations.append([])
            item = (line[4:].strip() if line.startswith("- - ") else line[2:].strip(), [])
        elif line.startswith("  - "):
            close_item()
            item = (line[4:].strip(), [])
        elif item is not None:
            item[1].append(line)
    close_item()
    return conversations


def load_conversations(language: str) -> list[list[str]]:
    """All conversations of one chatterbot language (by code, e.g. "en"), files in name order."""
    directory = chatterbot_data_dir() / CHATTERBOT_LANGUAGES[language]
    conversations: list[list[str]] = []
    for path in sorted(directory.glob("*.yml")):
        conversations.extend(parse_conversations(path.read_text(encoding="utf-8")))
    return [c for c in conversations if c and all(turn.strip() for turn in c)]


def dialog_documents(language: str) -> list[Document]:
    """Each conversation as alternating user/assistant turns (duplicates removed)."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    documents = []
    for conversation in load_conversations(language):
        messages = tuple(
            ("user" if index % 2 == 0 else "assistant", turn.strip()) for index, turn in enumerate(conversation)
        )
        if len(messages) >= 2 and messages not in seen:
            seen.add(messages)
            documents.append(Document(language, messages))
    return documents


def stdlib_files(max_bytes: int) -> list[Path]:
    """Top-level stdlib modules in a fixed pseudo-random order (by name hash) up to `max_bytes`."""
    directory = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(directory.glob("*.py"), key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    chosen, total = [], 0
    for path in paths:
        size = path.stat().st_size
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return chosen


def code_documents(max_bytes: int, chunk_lines: int = 20) -> list[Document]:
    """Chunks of stdlib source as chats: the user gives a chunk's first lines, the assistant
    continues the code."""
    documents = []
    for path in stdlib_files(max_bytes):
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        for start in range(0, len(lines), chunk_lines):
            chunk = lines[start : start + chunk_lines]
            if sum(1 for line in chunk if line.strip()) < 6:
                continue
            head = 3 + (start // chunk_lines) % 4
            prompt, continuation = "\n".join(chunk[:head]), "\n".join(chunk[head:]).strip("\n")
            if prompt.strip() and continuation.strip():
                documents.append(Document(CODE, (("user", prompt), ("assistant", continuation))))
    return documents


def split(documents: Iterable[Document]) -> tuple[list[Document], list[Document]]:
    """(train, held-out) by a hash of each document."""
    train: list[Document] = []
    heldout: list[Document] = []
    for document in documents:
        (heldout if document.heldout else train).append(document)
    return train, heldout
