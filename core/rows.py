"""``Row``: a dataclass whose ``as_dict()`` (what a command prints as JSON) is every field, by name."""

from __future__ import annotations

from dataclasses import asdict

__all__ = ["Row"]


class Row:
    """Mixin for a dataclass: ``as_dict()`` gives every field, by name (``dataclasses.asdict``)."""

    def as_dict(self) -> dict:
        """Every field, by name."""
        return asdict(self)
