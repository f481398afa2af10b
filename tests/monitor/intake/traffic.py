"""Small helpers that write traffic records for intake tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEXTS = {
    "en": ("How do I reset my password?", "Open settings, choose security, then reset password."),
    "zh": ("我怎么重置密码？", "打开设置，选择安全，然后重置密码。"),
    "code": ("Write a function that adds two numbers.", "def add(a, b):\n    return a + b\n"),
}


def record(index: int, language: str = "en", **metadata: str) -> dict[str, Any]:
    prompt, completion = TEXTS[language]
    return {
        "id": f"req-{index}",
        "timestamp": f"2026-11-28T10:{index % 60:02d}:00Z",
        "messages": [{"role": "user", "content": f"{prompt} #{index}"}],
        "completion": f"{completion} ({index})",
        "metadata": {"tenant": "acme", "region": "sg", **metadata},
    }


def line(index: int, language: str = "en", **metadata: str) -> bytes:
    return json.dumps(record(index, language, **metadata), ensure_ascii=False).encode() + b"\n"


def write_log(path: Path, indices: range, language: str = "en") -> bytes:
    data = b"".join(line(i, language) for i in indices)
    with path.open("ab") as handle:
        handle.write(data)
    return data
