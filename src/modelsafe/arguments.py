"""Checks of the arguments of the public calls, so a wrong argument fails at once with an
:class:`~modelsafe.errors.InvalidArgumentError` that names the call, the argument, what was
given and what to pass — never a bare ``TypeError`` from deep inside, and never a setting
that is silently ignored.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidArgumentError

__all__ = [
    "check_path",
    "check_flag",
    "check_storage_options",
    "check_names",
    "check_optional_name",
    "check_rename",
    "check_select",
    "check_metadata",
]


def _given(value: Any) -> str:
    """What a wrong argument is, in a few words: its type, and the value when it is short."""
    kind = type(value).__name__
    if isinstance(value, (int, float, bool, type(None))) or (isinstance(value, (str, bytes)) and len(value) <= 40):
        return f"{kind} {value!r}"
    return f"{'an' if kind[:1] in 'AEIOU' else 'a'} {kind}"


def _is_path(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str))


def check_path(value: Any, *, call: str, hint: str = "") -> None:
    """Raise unless ``value`` is a path (``str`` or ``os.PathLike``); ``call`` is the signature shown.

    >>> check_path("model.safetensors", call="ms.load(path)")
    >>> check_path(3, call="ms.load(path)")
    Traceback (most recent call last):
    ...
    modelsafe.errors.InvalidArgumentError: ms.load(path): path must be a file or directory path (str or os.PathLike), not int 3
    """
    if _is_path(value):
        if not os.fspath(value):
            raise InvalidArgumentError(f"{call}: path is empty; give a file or directory path")
        return
    message = f"{call}: path must be a file or directory path (str or os.PathLike), not {_given(value)}"
    raise InvalidArgumentError(message + (f"; {hint}" if hint else ""), path=None)


def check_flag(value: Any, *, call: str, name: str) -> None:
    """Raise unless ``value`` is a bool: ``verify="no"`` would otherwise count as true.

    >>> check_flag(True, call="ms.load", name="verify")
    """
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{call}: {name} must be True or False, not {_given(value)}")


def check_storage_options(storage_options: Any, path: Any, *, call: str) -> None:
    """``storage_options`` must be a dict or None, and configure only remote URLs (fsspec, such as
    ``s3://``): for a local path they would be silently ignored, so they are refused.

    >>> check_storage_options(None, "x.safetensors", call="ms.save")
    >>> check_storage_options({"anon": True}, "s3://bucket/x.safetensors", call="ms.save")
    """
    text = os.fspath(path)
    if storage_options is None:
        return
    if not isinstance(storage_options, dict):
        raise InvalidArgumentError(f"{call}: storage_options must be a dict or None, not {_given(storage_options)}")
    if storage_options and not ("://" in text and not text.startswith("file://")):
        raise InvalidArgumentError(
            f"{call}: storage_options={list(storage_options)} given for the local path {text}; "
            "storage_options configure remote storage (fsspec URLs such as s3://) and do nothing for a local path: "
            "drop storage_options",
            path=text,
        )


def check_names(value: Any, *, call: str, name: str, example: str) -> tuple[str, ...]:
    """``value`` as a tuple of strings; a bare string is refused (it would be read letter by letter).

    >>> check_names(["torchvision"], call="ms.load", name="trusted", example="['my_models']")
    ('torchvision',)
    """
    if isinstance(value, (str, bytes)) or not _iterable(value):
        raise InvalidArgumentError(
            f"{call}: {name} must be a list of strings, such as {name}={example}, not {_given(value)}"
        )
    names = tuple(value)
    for item in names:
        if not isinstance(item, str) or not item:
            raise InvalidArgumentError(
                f"{call}: {name} must hold non-empty strings, such as {name}={example}; it holds {_given(item)}"
            )
    return names


def check_optional_name(value: Any, *, call: str, name: str, example: str) -> None:
    """Raise unless ``value`` is None or a non-empty string.

    >>> check_optional_name(None, call="ms.register", name="name", example="'nets.MLP'")
    """
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidArgumentError(f"{call}: {name} must be a non-empty string such as {name}={example}, not {_given(value)}")


def check_select(select: Any) -> str | list[str] | None:
    """``ms.load_into``'s ``select`` (None, a key prefix, or keys) as None, a str or a list.

    >>> check_select(k for k in ["fc.weight"])
    ['fc.weight']
    """
    if select is None or isinstance(select, str):
        return select
    if isinstance(select, bytes) or not _iterable(select):
        raise InvalidArgumentError(
            "ms.load_into: select must be a key prefix such as select='encoder.' or a list of keys such as "
            f"select=['fc.weight', 'fc.bias'], not {_given(select)}"
        )
    return list(check_names(select, call="ms.load_into", name="select", example="['fc.weight', 'fc.bias']"))


def check_rename(rename: Any) -> None:
    """``ms.load_into``'s ``rename``: None or a dict of key prefixes, old to new.

    >>> check_rename({"hidden.": "encoder.0."})
    """
    example = "{'hidden.': 'encoder.0.'}"
    if rename is None:
        return
    if not isinstance(rename, dict):
        raise InvalidArgumentError(f"ms.load_into: rename must be a dict of key prefixes, such as rename={example}, not {_given(rename)}")
    for old, new in rename.items():
        if not isinstance(old, str) or not isinstance(new, str):
            raise InvalidArgumentError(
                f"ms.load_into: rename maps key prefixes to key prefixes (strings), such as rename={example}; "
                f"it maps {old!r} to {new!r}"
            )


def check_metadata(metadata: Any) -> None:
    """``ms.save``'s ``metadata``: None or a dict with string keys.

    >>> check_metadata({"run": "exp1"})
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidArgumentError(
            f"ms.save: metadata must be a dict such as metadata={{'run': 'exp1'}}, not {_given(metadata)}"
        )
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"ms.save: metadata keys must be strings, not {_given(key)}")


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True
