"""Checkpoint names: a template filled with the step and the metrics, safe as a path component.

>>> format_name("epoch{step:03d}-val_loss{val_loss:.4f}", 7, {"val_loss": 0.42101})
'epoch007-val_loss0.4210'
>>> format_name("{tag}", 1, {"tag": "../a/b"})
'_a_b'
"""

from __future__ import annotations

import numbers
import string
from typing import Any, Mapping

from .errors import InvalidArgumentError

__all__ = ["format_name", "check_name", "check_template", "normalize_metrics", "RESERVED_NAMES"]

RESERVED_NAMES = frozenset({"best", "latest", "files", "manifest.json"})
MAX_NAME = 200
_UNSAFE = {"/": "_", "\\": "_", "\0": "_", ":": "_"}


def normalize_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | int]:
    """Metrics as plain JSON-able numbers (tensors and numpy scalars become floats)."""
    if metrics is not None and not isinstance(metrics, Mapping):
        raise InvalidArgumentError(f"metrics must be a dict of metric name -> number, not {type(metrics).__name__}", key="metrics")
    out: dict[str, float | int] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"metric names must be non-empty strings, not {key!r}")
        if hasattr(value, "item") and callable(value.item):  # tensor / numpy scalar
            try:
                value = value.item()
            except (ValueError, RuntimeError):
                raise InvalidArgumentError(f"metric {key!r} must be a number, not a tensor with {getattr(value, 'shape', '?')} shape") from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidArgumentError(f"metric {key!r} must be a number, not {type(value).__name__}")
        out[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return out


def format_name(template: str, step: int, metrics: Mapping[str, Any]) -> str:
    """Fill ``template`` with ``step`` and ``metrics``; unsafe characters become ``_``."""
    fields = {**metrics, "step": step}
    try:
        name = string.Formatter().vformat(template, (), fields)
    except KeyError as exc:
        raise InvalidArgumentError(
            f"checkpoint name template {template!r} uses {{{exc.args[0]}}}, but this save has only "
            f"step and metrics {sorted(metrics)}; pass that metric to save() or change name="
        ) from None
    except (ValueError, IndexError) as exc:
        raise InvalidArgumentError(f"checkpoint name template {template!r} cannot be filled: {exc}") from None
    for bad, good in _UNSAFE.items():
        name = name.replace(bad, good)
    name = name.lstrip(".") if name not in (".", "..") else ""
    return check_name(name, template)


def check_name(name: str, template: str | None = None) -> str:
    """Raise InvalidArgumentError unless ``name`` is usable as a checkpoint name."""
    origin = f" (from template {template!r})" if template is not None else ""
    if not name or name.startswith(".") or any(c in name for c in _UNSAFE) or len(name) > MAX_NAME:
        raise InvalidArgumentError(f"checkpoint name {name!r}{origin} is not a safe path component; change name=")
    if name in RESERVED_NAMES:
        raise InvalidArgumentError(f"checkpoint name {name!r}{origin} is reserved; change name=")
    if name.isdigit():
        raise InvalidArgumentError(f"checkpoint name {name!r}{origin} is all digits and would read as a step; change name=")
    return name


def check_template(template: Any) -> str:
    """Raise InvalidArgumentError unless ``template`` is a well-formed name template.

    Fields must be named: ``{step}`` or a metric name, never ``{}`` or ``{0}`` (nothing
    fills positional fields, so the first save would fail).

    >>> check_template("epoch{step:03d}")
    'epoch{step:03d}'
    """
    if not isinstance(template, str) or not template:
        raise InvalidArgumentError(f"name= must be a non-empty name template such as 'step{{step}}', not {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InvalidArgumentError(f"checkpoint name template {template!r} is malformed ({exc}); change name=") from None
    for field in fields:
        root = field.split(".")[0].split("[")[0]
        if not root.isidentifier():
            raise InvalidArgumentError(
                f"checkpoint name template {template!r} has the field {{{field}}}; fields name the step or a metric, "
                "e.g. {step:03d} or {val_loss:.4f}"
            )
    return template
