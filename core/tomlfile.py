"""Reading a user's TOML file into a validated pydantic model, with errors that name the key.

A leaf module (imports nothing of the project but ``core.errors``), shared by
the presets (``twin``), the bench files (``devices``) and the service's config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import GainloopError

__all__ = ["format_validation_error", "load_toml_model", "read_toml"]

M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, what: str, source: str) -> str:
    """One line per problem: the dotted key and what is allowed (unknown keys called so)."""
    lines = [f"invalid {what} {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key (check its spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def read_toml(path: str | Path, what: str, error: type[GainloopError]) -> dict:
    """Parse a TOML file; a missing, unreadable or malformed file raises ``error`` saying which."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {p} is not valid TOML: {exc}") from None


def load_toml_model(path: str | Path, model: type[M], what: str, error: type[GainloopError]) -> M:
    """Read ``path`` and validate it as ``model``; every problem is reported with its key."""
    data = read_toml(path, what, error)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(exc, what, str(path))) from None
