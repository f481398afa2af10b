"""The starter config.toml, rendered from the config models: every key with its description,
bounds and default. The repository's config.toml is this rendering (a test keeps them equal).

    python -m monitor.base.config_template > config.toml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from monitor.base.config import Config, SecretSource

HEADER = """\
# specwatch configuration. Every key is optional; the values shown are the defaults.
# Relative paths are relative to this file. Secrets never go here: name an environment
# variable ({ env = "NAME" }) or a file ({ file = "/path" }) instead.
# Check it with: specwatch config check --config PATH

"""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, SecretSource | BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }" if value else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def bounds(field: FieldInfo) -> str:
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = []
    for constraint in field.metadata:
        for attribute, symbol in names.items():
            limit = getattr(constraint, attribute, None)
            if limit is not None:
                parts.append(f"{symbol} {limit}")
    return f" ({', '.join(parts)})" if parts else ""


def is_model(value: Any) -> bool:
    return isinstance(value, BaseModel) and not isinstance(value, SecretSource)


def render_section(model: BaseModel, path: list[str]) -> list[str]:
    """Plain keys first, then sub-tables: a model is [a.b], a dict of models is [a.b.NAME] each,
    a list of models is [[a.b]] each (TOML needs tables after the keys of their parent)."""
    lines: list[str] = []
    tables: list[tuple[str, str, BaseModel]] = []  # (header, description, model)
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        dotted = ".".join([*path, name])
        description = f"# {field.description}" if field.description else ""
        if is_model(value):
            tables.append((f"[{dotted}]", description, value))
        elif isinstance(value, dict) and value and all(is_model(item) for item in value.values()):
            tables.extend((f"[{dotted}.{key}]", description, item) for key, item in value.items())
        elif isinstance(value, list) and value and all(is_model(item) for item in value):
            tables.extend((f"[[{dotted}]]", description, item) for item in value)
        else:
            if field.description:
                lines.append(f"# {field.description}{bounds(field)}")
            lines.append(f"# {name} =   (not set)" if value is None else f"{name} = {toml_value(value)}")
    described = set()
    for header, description, section in tables:
        if description in described:
            description = ""
        described.add(description)
        lines.extend(["", *([description] if description else []), header])
        lines.extend(render_section(section, header.strip("[]").split(".")))
    return lines


def render_config(config: Config | None = None) -> str:
    body = render_section(config or Config(), [])
    return HEADER + "\n".join(body).lstrip("\n") + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_config())
