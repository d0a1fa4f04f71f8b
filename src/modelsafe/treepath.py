"""Paths inside a saved object tree, spelled the way Python would index them: ``obj["extra"][3].field``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["Attr", "format_path"]

_json_string = json.encoder.encode_basestring_ascii


@dataclass(frozen=True)
class Attr:
    """A path component that is an attribute (dataclass field), not an index."""

    name: str

    def __str__(self) -> str:
        return self.name


def format_path(parts: Iterable[Any]) -> str:
    """Render a tree path the way Python would index it: ``obj["extra"][3].field``.

    >>> format_path(["extra", 3, Attr("field")])
    'obj["extra"][3].field'
    """
    out = ["obj"]
    for part in parts:
        if isinstance(part, Attr):
            out.append(f".{part.name}")
        elif isinstance(part, str):
            out.append(f"[{_json_string(part)}]")  # what json.dumps(part) gives, without its overhead
        else:
            out.append(f"[{part!r}]")
    return "".join(out)
