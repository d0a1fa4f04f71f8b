"""``ms.Checkpoints``: a run of checkpoints with retention, atomic commits, resume and async saves.

>>> import numpy as np, tempfile, modelsafe as ms
>>> ck = ms.Checkpoints(tempfile.mkdtemp(), keep_last=1, keep_best=1, monitor="loss",
...                     name="step{step}-loss{loss:.2f}")
>>> for step, loss in enumerate([0.9, 0.3, 0.5, 0.7]):
...     _ = ck.save({"w": np.full(2, step)}, step=step, metrics={"loss": loss})
>>> [c.name for c in ck.list()]
['step1-loss0.30', 'step3-loss0.70']
>>> ck.best().step, ck.load("best")["w"]
(1, array([1, 1]))
>>> ck.close()

The pieces live in small modules: :mod:`.retention` (pure keep policies),
:mod:`.checkpoint_names`, :mod:`.checkpoint_dir` (directory format),
:mod:`.storage.commit` (staging, fsync, atomic rename, lock), :mod:`.async_save`
(snapshots, background writer) and :mod:`.checkpoint_copy` (fork and export).
docs/checkpoints.md specifies the layout and the commit protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import operator
import os
import secrets
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from . import retention
from .api import encode_metadata
from .async_save import BackgroundWriter, PendingSave, copy_plain_tree, snapshot
from .checkpoint_dir import (
    FILES_DIR,
    MANIFEST,
    CheckpointSource,
    build_manifest,
    hash_files,
    parse_manifest,
    write_manifest,
    write_shards,
)
from .checkpoint_copy import export_checkpoint, link_payloads
from .checkpoint_names import format_name, normalize_metrics
from .errors import CheckpointNotFoundError, ModelsafeError
from .format import checksum
from .gc_pause import gc_paused
from .sources import register_directory_opener
from .storage.commit import RUN_FILE, LocalRunStorage, RunStorage
from .storage import local_path
from .storage.local import storage_error
from .tree import flatten

__all__ = ["Checkpoints", "CheckpointInfo", "PendingSave", "RUN_FILE"]


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint: ``name``, ``step``, ``time`` (UTC), ``metrics``, ``size`` (bytes), ``path``.

    ``report`` holds the LoadReport when the info comes from ``load_into``.
    """

    name: str
    step: int
    time: datetime
    metrics: dict
    size: int
    path: str
    report: Any = field(default=None, compare=False, repr=False)
    run_id: str | None = field(default=None, compare=False, repr=False)
    lineage: tuple = field(default=(), compare=False, repr=False)

    @property
    def candidate(self) -> retention.Candidate:
        return retention.Candidate(self.name, self.step, self.time.timestamp(), self.metrics)


@dataclass
class _Binding:
    save: Callable[..., Any] | None
    load: Callable[..., Any] | None
    kwargs: dict


# -- metrics in JSON: non-finite floats as strings -----------------------------------

def _metrics_to_json(metrics: dict) -> dict:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else repr(v)) for k, v in metrics.items()}


def _metrics_from_json(metrics: dict) -> dict:
    return {k: (float(v) if v in ("nan", "inf", "-inf") else v) for k, v in metrics.items()}


def _storage_for(directory: Any, storage_options: dict | None) -> RunStorage:
    return LocalRunStorage(local_path(directory, what="run directory"))


class Checkpoints:
    """A directory of checkpoints: keep the last N and the best K, resume, save in the background.

    ``keep_last`` / ``keep_best``: how many of the newest (by step) and of the best (by
    ``monitor``, ``mode`` "min" or "max") to keep, together; the newest is always kept;
    with neither, every checkpoint is kept.  ``name``: a template filled with ``step``
    and the metrics, e.g. ``"epoch{step:03d}-val_loss{val_loss:.4f}"``.  With
    ``async_save=True``, ``save`` returns a :class:`PendingSave` once the state is
    copied, and writing continues in the background.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        monitor: str | None = None,
        mode: str = "min",
        name: str = "step{step}",
        async_save: bool = False,
        storage_options: dict | None = None,
    ) -> None:
        if mode not in retention.MODES:
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        for label, value in (("keep_last", keep_last), ("keep_best", keep_best)):
            if value is not None and (isinstance(value, bool) or operator.index(value) < 0):
                raise ValueError(f"{label} must be a non-negative integer or None, not {value!r}")
        if keep_best and not monitor:
            raise ValueError("keep_best needs monitor= (the name of the metric that ranks checkpoints)")
        self._storage = _storage_for(directory, storage_options)
        self.directory = self._storage.location
        self.keep_last, self.keep_best, self.monitor, self.mode = keep_last, keep_best, monitor, mode
        self.name_template = name
        self.async_save = async_save
        self.storage_options = storage_options
        self._policy = retention.policy_for(keep_last, keep_best, monitor, mode)
        self._prunes = keep_last is not None or keep_best is not None
        self._writer = BackgroundWriter(os.path.basename(self.directory)) if async_save else None
        self._binding: _Binding | None = None
        self._run: dict | None = None
        self._cache: dict[str, tuple[tuple, CheckpointInfo | None]] = {}
        self._scan_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<modelsafe.Checkpoints {self.directory!r} keep_last={self.keep_last} keep_best={self.keep_best}>"

    # -- listing -----------------------------------------------------------------------
    def _info(self, name: str, manifest: dict | None = None, manifest_size: int = 0) -> CheckpointInfo | None:
        """Info of committed checkpoint ``name`` from its manifest (cached; ``manifest`` if just written)."""
        signature = self._storage.manifest_signature(name)
        if signature is None:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        if manifest is not None:
            info = _info_from_manifest(manifest, name, self._storage.checkpoint_path(name), manifest_size)
            self._cache[name] = (signature, info)
            return info
        data = self._storage.read_manifest(name)
        info = None
        if data is not None:
            try:
                where = self._storage.checkpoint_path(name)
                info = _info_from_manifest(parse_manifest(data, where), name, where, len(data))
            except ModelsafeError as exc:
                warnings.warn(f"skipping {self._storage.path(name)}: {exc}", stacklevel=3)
        self._cache[name] = (signature, info)
        return info

    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints, oldest first (ordered by step, then commit time)."""
        with self._scan_lock:
            names = self._storage.entries()
            infos = [info for info in map(self._info, names) if info is not None]
            for gone in set(self._cache) - set(names):
                del self._cache[gone]
        return sorted(infos, key=lambda i: retention.order_key(i.candidate))

    def latest(self) -> CheckpointInfo | None:
        """The committed checkpoint with the highest step, or None."""
        infos = self.list()
        return infos[-1] if infos else None

    def best(self) -> CheckpointInfo | None:
        """The best committed checkpoint by ``monitor``/``mode``, or None (none has the metric)."""
        if not self.monitor:
            raise ValueError(f"{self.directory}: best() needs monitor= on Checkpoints (the metric that ranks checkpoints)")
        infos = self.list()
        ranked = retention.rank_best([i.candidate for i in infos], self.monitor, self.mode)
        if not ranked:
            return None
        return next(i for i in infos if i.name == ranked[0].name)

    def _resolve(self, which: Any) -> CheckpointInfo:
        if isinstance(which, CheckpointInfo):
            return which
        infos = self.list()
        found: CheckpointInfo | None = None
        if which == "latest":
            found = infos[-1] if infos else None
        elif which == "best":
            found = self.best()
        elif isinstance(which, int) and not isinstance(which, bool):
            matches = [i for i in infos if i.step == which]
            found = matches[-1] if matches else None
        elif isinstance(which, str):
            found = next((i for i in infos if i.name == which), None)
            if found is None and which.isdigit():
                return self._resolve(int(which))
        else:
            raise TypeError(f"which must be 'latest', 'best', a step (int) or a checkpoint name, not {which!r}")
        if found is None:
            have = ", ".join(i.name for i in infos[-5:]) or "none"
            raise CheckpointNotFoundError(
                f"{self.directory}: no committed checkpoint {which!r} (latest checkpoints: {have})", path=self.directory, key=str(which)
            )
        return found

    # -- the writer side ------------------------------------------------------------------
    def _become_writer(self, *, record_settings: bool = False) -> dict:
        """Take the run's lock, clean what crashed writers left, read (or create) the run file.

        ``record_settings``: store this object's keep/monitor/name settings in the run file
        (done by ``save``; maintenance such as ``delete`` leaves the run's settings alone).
        """
        if self._run is None or not getattr(self._storage, "locked", True):
            self._storage.lock()
            try:
                self._storage.clean_leftovers()
                self._run = self._read_or_create_run()
            except BaseException:
                self._storage.unlock()
                raise
        if record_settings and any(self._run.get(k) != v for k, v in self._settings().items()):
            self._run = self._read_or_create_run(record_settings=True)
        return self._run

    def _read_run(self) -> dict | None:
        data = self._storage.read_run_file()
        try:
            run = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return run if isinstance(run, dict) and isinstance(run.get("run_id"), str) else None

    def _settings(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode, "keep_last": self.keep_last,
                "keep_best": self.keep_best, "name": self.name_template}

    def _read_or_create_run(self, lineage: list | None = None, *, record_settings: bool = False) -> dict:
        """The run file (run id, lineage, settings); written when new or changed."""
        old = self._read_run()
        settings = self._settings()
        if old is not None and not record_settings:
            settings = {k: old.get(k) for k in settings}
        run = {
            "format": "modelsafe run",
            "run_id": old["run_id"] if old else secrets.token_hex(8),
            "created": old.get("created") if old else datetime.now(timezone.utc).isoformat(),
            "lineage": lineage if lineage is not None else (old.get("lineage", []) if old else []),
            **settings,
        }
        if run != old:
            self._storage.write_run_file(json.dumps(run, indent=1).encode())
        return run

    def save(self, state: Any = None, *, step: int | None = None, metrics: dict | None = None, metadata: dict | None = None) -> Any:
        """Save ``state`` as the checkpoint for ``step`` and apply retention.

        Returns the CheckpointInfo, or a PendingSave when ``async_save`` is on (the state
        is copied before this returns).  A failed earlier background save is raised here.
        ``step`` defaults to one past the latest; ``metrics`` fill the name template and
        rank checkpoints.  With a bound ``save`` function, it writes into ``files/``.
        """
        if self._writer is not None:
            self._writer.wait()  # one save in flight at a time; re-raises a failed one
        run = self._become_writer(record_settings=True)
        metrics = normalize_metrics(metrics)
        infos = self.list()
        if step is None:
            step = infos[-1].step + 1 if infos else 0
        if isinstance(step, bool) or operator.index(step) < 0:
            raise ValueError(f"step must be a non-negative integer, not {step!r}")
        step = operator.index(step)
        name = format_name(self.name_template, step, metrics)
        same = next((i for i in infos if i.name == name), None)
        if same is not None and same.run_id != run["run_id"]:
            raise ValueError(
                f"{self.directory}: checkpoint {name!r} exists but was not written by this run; "
                "modelsafe never replaces it. Change name= or remove it yourself"
            )
        clash = same if same is not None and same.step != step else None
        if clash is not None:
            raise ValueError(
                f"{self.directory}: checkpoint name {name!r} for step {step} is already taken by step {clash.step}; "
                f"put {{step}} in the name template ({self.name_template!r})"
            )
        if infos and step < infos[-1].step:
            warnings.warn(
                f"{self.directory}: saving step {step} after step {infos[-1].step}; retention orders checkpoints by step, "
                "so this one counts as older", stacklevel=2,
            )
        # async: copy plain trees of tensors as they are and flatten in the background
        # (the cheapest snapshot); anything else is flattened here and its payloads copied
        plain = copy_plain_tree(state) if self._writer is not None else None
        with gc_paused():
            fl = flatten(state) if plain is None else None
        metadata_node = encode_metadata(metadata)
        checkpoint = {
            "name": name,
            "step": step,
            "time": datetime.now(timezone.utc).isoformat(),
            "metrics": _metrics_to_json(metrics),
            "run_id": run["run_id"],
            "lineage": run.get("lineage", []),
        }
        staging = self._storage.stage(name)
        try:
            if self._binding is not None and self._binding.save is not None:
                files = os.path.join(staging, FILES_DIR)
                os.mkdir(files)
                self._binding.save(files, **self._binding.kwargs)
            if fl is not None and self._writer is not None:
                fl = snapshot(fl)
        except BaseException:
            self._storage.discard(staging)
            raise

        def job() -> CheckpointInfo:
            flat = fl if fl is not None else _flatten_or_discard(plain, staging, self._storage)
            return self._write_and_commit(staging, flat, metadata_node, checkpoint)

        if self._writer is not None:
            return self._writer.submit(name, step, job)
        return job()

    def _write_and_commit(self, staging: str, fl: Any, metadata_node: Any, checkpoint: dict) -> CheckpointInfo:
        name = checkpoint["name"]
        try:
            checksums, placement, shards = write_shards(staging, fl)
            files = hash_files(staging)
            with gc_paused():  # many small objects, none of them cyclic garbage
                manifest = build_manifest(fl, metadata_node, checksums, placement, shards, files, checkpoint)
                manifest_size = write_manifest(staging, manifest)
            path = self._storage.commit(staging, name)
        except BaseException as exc:
            self._storage.discard(staging)
            if isinstance(exc, OSError) and not isinstance(exc, ModelsafeError):
                where = exc.filename if isinstance(exc.filename, str) and exc.filename.startswith(staging) else None
                action = f"writing {os.path.relpath(where, staging)}" if where else "saving the checkpoint"
                raise storage_error(self._storage.path(name), action, exc) from exc
            raise
        with self._scan_lock:
            info = self._info(name, manifest, manifest_size)
        if info is None:  # pragma: no cover - we just committed it
            raise ModelsafeError(f"{path}: internal error: the committed checkpoint cannot be read back", path=path)
        self._prune()
        return info

    def _prune(self) -> list[str]:
        if not self._prunes:
            return []
        run_id = self._run["run_id"] if self._run else None
        ours = [i.candidate for i in self.list() if i.run_id == run_id]
        doomed = retention.to_delete(ours, self._policy)
        for candidate in doomed:
            self._storage.delete(candidate.name)
        return [c.name for c in doomed]

    def delete(self, which: Any) -> CheckpointInfo:
        """Delete one committed checkpoint of this run (as its writer); returns what it was."""
        self._become_writer()
        info = self._resolve(which)
        self._storage.delete(info.name)
        return info

    def wait(self) -> CheckpointInfo | None:
        """Wait for a background save; re-raise it if it failed.  Returns the last info (or None)."""
        if self._writer is None:
            return None
        return self._writer.wait()

    def close(self) -> None:
        """Wait for background saves (re-raising a failure) and release the run's writer lock."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
            self._storage.unlock()
            self._run = None

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is None or not self._writer.busy:
                self._storage.unlock()

    # -- bind (NSML contract) -------------------------------------------------------------
    def bind(self, save: Callable[..., Any] | None = None, load: Callable[..., Any] | None = None, **kwargs: Any) -> "Checkpoints":
        """Let your own functions write and read a checkpoint's files.

        ``save(path, **kwargs)`` gets a fresh empty directory inside the checkpoint being
        written and may write any number of files; ``load(path)`` gets it back on
        ``load``/``load_into``.  modelsafe still commits atomically, hashes and verifies
        those files and applies retention.

        >>> import os, tempfile, modelsafe as ms
        >>> ck = ms.Checkpoints(tempfile.mkdtemp())
        >>> def save(path, real=False):
        ...     open(os.path.join(path, "model.txt"), "w").write(f"real={real}")
        >>> def load(path):
        ...     return open(os.path.join(path, "model.txt")).read()
        >>> _ = ck.bind(save=save, load=load, real=True)
        >>> _ = ck.save(step=1)
        >>> ck.load(1)
        'real=True'
        >>> ck.close()
        """
        self._binding = _Binding(save, load, dict(kwargs))
        return self

    # -- reading ----------------------------------------------------------------------------
    def load(
        self,
        which: Any = "latest",
        *,
        map_location: Any = None,
        framework: str | None = None,
        trusted: Iterable[str] = (),
        allow_pickle: bool = False,
        verify: bool = True,
    ) -> Any:
        """Load a checkpoint: ``"latest"``, ``"best"``, a step (int) or a name.

        Returns the saved state; with a bound ``load`` function it is called with the
        checkpoint's ``files/`` directory, and its result is returned when no state was saved.
        """
        from .api import load as ms_load

        info = self._resolve(which)
        state = ms_load(info.path, map_location=map_location, framework=framework, trusted=trusted,
                        allow_pickle=allow_pickle, verify=verify)
        bound = self._call_bound_load(info, verify)
        return bound if state is None and bound is not None else state

    def _call_bound_load(self, info: CheckpointInfo, verify: bool) -> Any:
        if self._binding is None or self._binding.load is None:
            return None
        with CheckpointSource(info.path) as source:
            if not source.manifest["files"] and not os.path.isdir(os.path.join(info.path, FILES_DIR)):
                return None
            if verify:
                source.verify_files()
        return self._binding.load(os.path.join(info.path, FILES_DIR))

    def load_into(self, state: Any, which: Any = "latest", *, strict: bool = True, verify: bool = True) -> CheckpointInfo | None:
        """Resume: restore ``state`` in place from the latest checkpoint (or ``which``).

        Returns the CheckpointInfo (its ``report`` holds the load report), or None when the
        run has no committed checkpoint yet, so ``start = info.step + 1 if info else 0``.
        """
        if which == "latest" and self.latest() is None:
            return None
        info = self._resolve(which)
        report = None
        if state is not None:
            from .load_into import load_into as ms_load_into

            report = ms_load_into(state, info.path, strict=strict, verify=verify)
        self._call_bound_load(info, verify)
        return dataclasses.replace(info, report=report)

    # -- fork and export ----------------------------------------------------------------------
    def fork(self, dst: str | os.PathLike, which: Any = "best", **settings: Any) -> "Checkpoints":
        """Start run ``dst`` from checkpoint ``which`` of this run; returns its Checkpoints.

        The new run's first checkpoint shares the source's files through hard links where
        the file system allows (no byte copied twice) and records its lineage.  ``settings``
        override the keep/monitor/name options, which are copied from this run by default.
        """
        info = self._resolve(which)
        options = dict(keep_last=self.keep_last, keep_best=self.keep_best, monitor=self.monitor, mode=self.mode,
                       name=self.name_template, async_save=self.async_save, storage_options=self.storage_options)
        options.update(settings)
        target = Checkpoints(dst, **options)
        if os.path.abspath(target.directory) == os.path.abspath(self.directory):
            raise ValueError(f"{self.directory}: fork needs a different destination directory")
        target._become_writer()
        if target.list():
            target.close()
            raise ValueError(f"{target.directory}: already holds checkpoints; fork into a new directory")
        raw = _read_bytes(os.path.join(info.path, MANIFEST))
        manifest = parse_manifest(raw, info.path)
        lineage = list(manifest["checkpoint"].get("lineage") or []) + [{
            "run": self.directory,
            "run_id": info.run_id,
            "checkpoint": info.name,
            "step": info.step,
            "manifest_xxh3": checksum.digest(raw),
        }]
        run = target._read_or_create_run(lineage=lineage, record_settings=True)
        target._run = run
        manifest["checkpoint"].update(run_id=run["run_id"], lineage=lineage)
        staging = target._storage.stage(info.name)
        try:
            link_payloads(info.path, manifest, staging)
            write_manifest(staging, manifest)
            target._storage.commit(staging, info.name)
        except BaseException as exc:
            target._storage.discard(staging)
            if isinstance(exc, OSError) and not isinstance(exc, ModelsafeError):
                raise storage_error(target._storage.path(info.name), "forking the checkpoint", exc) from exc
            raise
        return target

    def export(self, path: str | os.PathLike, which: Any = "best", *, key: str | None = None) -> CheckpointInfo:
        """Write the inference part of a checkpoint as one safetensors file.

        Entry ``key`` of a saved dict is copied (by default its ``"model"`` entry, or the whole
        state when it has none), recipe included, with tensor names relative to it (a state_dict
        keeps its keys); a ``key`` the state lacks is an error.
        Checksums are verified on the way; nothing is rebuilt or imported.
        """
        info = self._resolve(which)
        origin = {"run": self.directory, "checkpoint": info.name, "step": info.step, "metrics": _metrics_to_json(info.metrics)}
        export_checkpoint(info.path, os.fspath(path), key=key, origin=origin)
        return info


# -- helpers ------------------------------------------------------------------------------

def _flatten_or_discard(tree: Any, staging: str, storage: RunStorage) -> Any:
    try:
        with gc_paused():
            return flatten(tree)
    except BaseException:
        storage.discard(staging)
        raise


def _info_from_manifest(manifest: dict, name: str, path: str, manifest_size: int) -> CheckpointInfo:
    block = manifest["checkpoint"]
    try:
        when = datetime.fromisoformat(block.get("time"))
    except (TypeError, ValueError):
        when = datetime.fromtimestamp(0, timezone.utc)
    size = manifest_size + sum(int(s.get("size", 0)) for s in manifest["shards"]) + sum(f["size"] for f in manifest["files"].values())
    return CheckpointInfo(
        name=name, step=block["step"], time=when, metrics=_metrics_from_json(block["metrics"]),
        size=size, path=path, run_id=block.get("run_id"), lineage=tuple(block.get("lineage") or ()),
    )


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_FILE))


def _open_run(path: str, **_: Any) -> CheckpointSource:
    latest = Checkpoints(path).latest()
    if latest is None:
        raise CheckpointNotFoundError(f"{path}: this run has no committed checkpoint yet", path=path)
    return CheckpointSource(latest.path)


register_directory_opener(_is_run_dir, _open_run)
