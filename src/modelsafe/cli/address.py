"""Paths on the command line: files, checkpoint directories, runs and ``RUN@selector``.

``RUN@best``, ``RUN@latest``, ``RUN@<step>`` and ``RUN@<name>`` address one checkpoint
of the run in directory ``RUN``; anywhere a path is taken, such an address works too.
A path that exists is always taken literally, so files with ``@`` in their names
still work; otherwise the text is split at the right-most ``@`` whose left part is
an existing directory.

>>> parse_address("runs/exp1@best").selector
'best'
>>> parse_address("model.safetensors").selector is None
True
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointNotFoundError
from .errors import UsageProblem

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Address:
    """``text`` as given; ``path`` the file or directory; ``selector`` what follows ``@``."""

    text: str
    path: str
    selector: str | None = None

    @property
    def step(self) -> int | None:
        """The step a numeric selector names (``RUN@7``), else None."""
        if self.selector is not None and self.selector.isdigit():
            return int(self.selector)
        return None


def parse_address(text: str) -> Address:
    """Split ``text`` into a path and an optional ``@`` selector (see module docs)."""
    if not text:
        raise UsageProblem("an empty path was given")
    if "@" not in text or os.path.exists(text):
        return Address(text, text)
    candidates = [i for i, c in enumerate(text) if c == "@"]
    for i in reversed(candidates):
        run, selector = text[:i], text[i + 1 :]
        if run and os.path.isdir(run):
            if not selector:
                raise UsageProblem(f"{text!r}: nothing after '@'; use RUN@best, RUN@latest, RUN@<step> or RUN@<name>")
            return Address(text, run, selector)
    run, _, selector = text.rpartition("@")
    if not run or not selector:
        raise UsageProblem(f"{text!r} is not a path or RUN@selector (RUN@best, RUN@latest, RUN@<step>, RUN@<name>)")
    return Address(text, run, selector)  # the run is missing; resolution reports it


def is_checkpoint_dir(path: str) -> bool:
    """A committed checkpoint directory (holds a manifest.json)."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def is_run_dir(path: str) -> bool:
    """A directory that is not itself a checkpoint: a run of checkpoints (possibly empty)."""
    return os.path.isdir(path) and not is_checkpoint_dir(path)


# -- resolution ---------------------------------------------------------------------------

def run_settings(path: str) -> dict[str, Any]:
    """The settings a run recorded (monitor, mode, keep_last, keep_best, name, lineage), or {}."""
    from ..checkpoints import RUN_FILE

    try:
        with open(os.path.join(path, RUN_FILE), "rb") as f:
            settings = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def open_run(path: str, *, monitor: str | None = None, mode: str | None = None) -> Any:
    """``ms.Checkpoints`` reading the run in ``path``, ranking by its recorded monitor unless overridden.

    Opening for reading takes no lock and writes nothing.
    """
    if os.path.isfile(path):
        raise UsageProblem(f"{path!r} is a file, not a run directory; '@' addresses a checkpoint of a run")
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path}: no such run directory; check the path", path=path)
    from ..checkpoints import Checkpoints

    settings = run_settings(path)
    monitor = monitor or settings.get("monitor") or None
    mode = mode or settings.get("mode") or "min"
    if mode not in ("min", "max"):
        mode = "min"
    monitor = monitor if isinstance(monitor, str) else None
    recorded = {k: settings[k] for k in ("keep_last", "keep_best", "name") if settings.get(k) is not None}
    try:  # the run's own settings travel on (fork copies them); reading never prunes
        return Checkpoints(path, monitor=monitor, mode=mode, **recorded)
    except (TypeError, ValueError):
        return Checkpoints(path, monitor=monitor, mode=mode)


def listing(run: Any) -> tuple[list[Any], list[str]]:
    """(committed checkpoints oldest first, warnings about entries that could not be read)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = run.list()
    return infos, [str(w.message) for w in caught]


def select(run: Any, run_path: str, selector: str) -> Any:
    """The CheckpointInfo that ``selector`` names in ``run`` (best, latest, step or name)."""
    infos, _ = listing(run)
    if not infos:
        raise CheckpointNotFoundError(f"{run_path}: the run has no committed checkpoints", path=run_path)
    if selector == "latest":
        return infos[-1]
    if selector == "best":
        if not run.monitor:
            raise CheckpointNotFoundError(
                f"{run_path}: the run records no monitored metric, so no checkpoint is 'best'; "
                "pass --monitor METRIC where the command has it, or address one by step or name (RUN@<step>, RUN@<name>)",
                path=run_path, key="best",
            )
        best = run.best()
        if best is None:
            raise CheckpointNotFoundError(
                f"{run_path}: no checkpoint records the metric {run.monitor!r}, so none is 'best'; "
                "address one by step or name instead (RUN@<step>, RUN@<name>)",
                path=run_path, key="best",
            )
        return best
    if selector.isdigit():
        step = int(selector)
        matches = [i for i in infos if i.step == step]
        if matches:
            return matches[-1]
    for info in infos:
        if info.name == selector:
            return info
    names = ", ".join(i.name for i in infos[-5:])
    raise CheckpointNotFoundError(
        f"{run_path}: no checkpoint {selector!r} (by step or name); it has {len(infos)} checkpoints, "
        f"the latest: {names}. Use `modelsafe ls {run_path}` to see them",
        path=run_path, key=selector,
    )


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
    if not os.path.isdir(address.path):
        raise CheckpointNotFoundError(f"{text}: no such run directory; check the path", path=text)
    if is_checkpoint_dir(address.path):
        raise UsageProblem(f"{text!r} is one checkpoint, not a run; give the run directory that holds it")
    return address.path
