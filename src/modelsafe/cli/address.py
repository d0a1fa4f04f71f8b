"""Paths on the command line: files, checkpoint directories, runs and ``RUN@selector``.

The library parses and resolves addresses (:mod:`modelsafe.addresses`,
``Checkpoints.info``); this module only turns their argument errors into usage
errors (exit 2) and adds what commands need around them.

>>> parse_address("runs/exp1@best").selector
'best'
>>> parse_address("model.safetensors").selector is None
True
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

from .. import addresses
from ..addresses import SELECTORS, Address, is_url, remote_kind as _remote_kind
from ..errors import CheckpointNotFoundError, InvalidArgumentError, ModelsafeError
from .errors import UsageProblem

MANIFEST = "manifest.json"

__all__ = ["Address", "parse_address", "resolve", "resolve_checkpoint", "resolve_run", "open_run", "select"]


def parse_address(text: str) -> Address:
    """Split ``text`` into a path and an optional ``@`` selector (:func:`modelsafe.addresses.parse_address`)."""
    try:
        address = addresses.parse_address(text)
    except InvalidArgumentError as exc:
        raise UsageProblem(str(exc)) from None
    run, _, selector = text.rpartition("@")
    if address.selector is None and "@" in text and not os.path.exists(text) and (not run or not selector):
        raise UsageProblem(f"{text!r} is not a path or an address ({SELECTORS})")
    return address


def is_checkpoint_dir(path: str) -> bool:
    """A committed checkpoint directory (holds a manifest.json)."""
    if is_url(path):
        return remote_kind(path) == "checkpoint"
    return os.path.isfile(os.path.join(path, MANIFEST))


def is_run_dir(path: str) -> bool:
    """A directory that is not itself a checkpoint: a run of checkpoints (possibly empty); a URL holding a run file."""
    if is_url(path):
        return remote_kind(path) == "run"
    return os.path.isdir(path) and not is_checkpoint_dir(path)


def remote_kind(url: str) -> str | None:
    """"file", "checkpoint", "run" or None for a URL (credentials and endpoint from the AWS_* environment)."""
    return _remote_kind(url)


# -- resolution ---------------------------------------------------------------------------

def run_settings(path: str) -> dict[str, Any]:
    """The settings a run recorded (monitor, mode, keep_last, keep_best, name, lineage), or {}."""
    from ..run_file import parse_run_file
    from ..storage.commit import RUN_FILE, LocalRunStorage

    if is_url(path):
        from ..checkpoints import Checkpoints

        try:
            return Checkpoints(path)._read_run() or {}
        except (ModelsafeError, OSError):
            return {}
    try:  # the one bounded reader and parser of run files (no link, FIFO or device is opened)
        data = LocalRunStorage(path).read_run_file()
        return parse_run_file(data, os.path.join(path, RUN_FILE)) if data is not None else {}
    except (ModelsafeError, OSError):
        return {}


def open_run(path: str, *, monitor: str | None = None, mode: str | None = None) -> Any:
    """``ms.Checkpoints`` reading the run in ``path`` with its recorded settings, ``monitor``/``mode`` overriding.

    Opening for reading takes no lock and writes nothing.
    """
    if is_url(path):
        kind = remote_kind(path)
        if kind is None:
            raise CheckpointNotFoundError(f"{path}: no run here (no run file); check the URL", path=path)
        if kind != "run":
            raise UsageProblem(f"{path!r} is a {kind}, not a run; '@' addresses a checkpoint of a run")
    elif os.path.isfile(path):
        raise UsageProblem(f"{path!r} is a file, not a run directory; '@' addresses a checkpoint of a run")
    elif not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path}: no such run directory; check the path", path=path)
    from ..checkpoints import Checkpoints

    overrides = {k: v for k, v in (("monitor", monitor), ("mode", mode)) if v is not None}
    return Checkpoints(path, **overrides)


def listing(run: Any) -> tuple[list[Any], list[str]]:
    """(committed checkpoints oldest first, warnings about entries that could not be read)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = run.list()
    return infos, [str(w.message) for w in caught]


def select(run: Any, run_path: str, selector: str) -> Any:
    """The CheckpointInfo that ``selector`` names in ``run`` (best, latest, step or name): ``run.info``."""
    with warnings.catch_warnings():  # unreadable entries are reported by the commands that list
        warnings.simplefilter("ignore")
        return run.info(selector)


@dataclass(frozen=True)
class Resolved:
    """One checkpoint or file: ``path``; ``run`` and ``info`` when it lies in a run."""

    path: str
    run: Any = None
    info: Any = None


def resolve(text: str, *, monitor: str | None = None, mode: str | None = None) -> Resolved:
    """What ``text`` addresses: a file, a checkpoint directory, or one checkpoint of a run.

    A run directory without ``@`` means its latest checkpoint, as in ``ms.load(run)``.
    """
    address = parse_address(text)
    if is_url(address.path) and address.selector is None and remote_kind(address.path) != "run":
        return Resolved(address.path)  # a file or checkpoint (or nothing: ms.open says so)
    if address.selector is None and not is_run_dir(address.path):
        if not os.path.exists(address.path):
            raise CheckpointNotFoundError(f"{text}: no such file, checkpoint or run; check the path", path=text)
        return Resolved(address.path)
    run = open_run(address.path, monitor=monitor, mode=mode)
    info = select(run, address.path, address.selector or "latest")
    return Resolved(os.fspath(info.path), run, info)


def resolve_checkpoint(text: str) -> str:
    """The path of the single file or checkpoint directory that ``text`` addresses."""
    return resolve(text).path


def resolve_run(text: str) -> str:
    """The run directory ``text`` names (no ``@`` selector allowed)."""
    address = parse_address(text)
    if address.selector is not None:
        raise UsageProblem(f"{text!r}: this command takes a whole run, not one checkpoint; drop '@{address.selector}'")
    if is_url(address.path):
        if remote_kind(address.path) != "run":
            raise CheckpointNotFoundError(f"{text}: no run here (no run file); check the URL", path=text)
        return address.path
    if not os.path.isdir(address.path):
        raise CheckpointNotFoundError(f"{text}: no such run directory; check the path", path=text)
    if is_checkpoint_dir(address.path):
        raise UsageProblem(f"{text!r} is one checkpoint, not a run; give the run directory that holds it")
    return address.path
