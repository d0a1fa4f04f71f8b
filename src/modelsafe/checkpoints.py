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
import numbers
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
from .arguments import check_flag, check_storage_options
from .async_save import BackgroundWriter, PendingSave, copy_plain_tree, snapshot
from .checkpoint_copy import export_checkpoint, link_payloads
from .checkpoint_dir import (
    FILES_DIR,
    MANIFEST,
    CheckpointSource,
    ShardIndex,
    build_manifest,
    copy_bound_files,
    hash_files,
    parse_manifest,
    removed_error,
    write_manifest,
    write_shards,
)
from .checkpoint_names import check_template, format_name, normalize_metrics
from .errors import (
    CheckpointNotFoundError,
    CheckpointRemovedError,
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelsafeError,
    RunConflictError,
)
from .format import checksum
from .format.plan import FlatState
from .gc_pause import gc_paused
from .progress import OnBytes, progress_bar
from .rng import RNGState, restore_json
from .run_file import parse_run_file
from .sources import directory_opener, open_source, register_directory_opener, register_run_opener
from .storage import is_url, local_path
from .storage.commit import RUN_FILE, LocalRunStorage, RunStorage
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


_RESCANS = 10  # listings retried while a racing writer commits and prunes (each retry sees a newer state)


def _storage_for(directory: Any, storage_options: dict | None) -> RunStorage:
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise InvalidArgumentError(f"the run directory must be a path (str or os.PathLike), not {directory!r}", key="directory")
    if is_url(directory):
        from .storage.remote_run import RemoteRunStorage

        check_storage_options(storage_options, directory, call="ms.Checkpoints")
        return RemoteRunStorage(os.fspath(directory), storage_options)
    location = local_path(directory, what="run directory")
    if storage_options is not None:  # they only mean something to an fsspec backend
        raise InvalidArgumentError(
            f"{location}: storage_options= apply to remote (fsspec) URLs such as s3://, and this is a local path; "
            "drop storage_options", path=location, key="storage_options",
        )
    return LocalRunStorage(location)


class _FromRun:
    """Default of the settings of Checkpoints: the value the run recorded, else the built-in default."""

    def __repr__(self) -> str:
        return "<the run's>"


FROM_RUN: Any = _FromRun()
# settings a run records in its run file, with their defaults for a new run
SETTING_DEFAULTS = {"keep_last": None, "keep_best": None, "monitor": None, "mode": "min", "name": "step{step}"}


def _check_settings(settings: dict, given: Iterable[str]) -> None:
    """Raise InvalidArgumentError for settings that are wrong, or that would be silently ignored."""
    if settings["mode"] not in retention.MODES:
        raise InvalidArgumentError(f"mode must be 'min' or 'max', not {settings['mode']!r}", key="mode")
    for label in ("keep_last", "keep_best"):
        value = settings[label]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidArgumentError(f"{label} must be a non-negative integer or None, not {value!r}", key=label)
    monitor = settings["monitor"]
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise InvalidArgumentError(f"monitor must be a metric name (a non-empty string) or None, not {monitor!r}", key="monitor")
    if settings["keep_best"] and not monitor:
        raise InvalidArgumentError("keep_best needs monitor= (the name of the metric that ranks checkpoints)", key="keep_best")
    if settings["mode"] != SETTING_DEFAULTS["mode"] and "mode" in given and not monitor:  # passing the default is fine
        raise InvalidArgumentError(f"mode={settings['mode']!r} says how monitor= ranks checkpoints, but no monitor= is set; "
                                   "give monitor= too", key="mode")
    check_template(settings["name"])


def _settings(given: dict, recorded: dict) -> dict:
    """The settings of a Checkpoints: what the caller gave, else what the run recorded, else the defaults.

    ``mode`` goes with ``monitor``: naming another monitor without a mode ranks by "min",
    never by the mode the run recorded for its own monitor.
    """
    settings = {**SETTING_DEFAULTS, **recorded, **given}
    if "monitor" in given and "mode" not in given:
        settings["mode"] = SETTING_DEFAULTS["mode"]
    for label in ("keep_last", "keep_best"):  # numpy integers count too; the run file gets plain ints
        if isinstance(settings[label], numbers.Integral) and not isinstance(settings[label], bool):
            settings[label] = int(settings[label])
    _check_settings(settings, given)
    return settings


class Checkpoints:
    """A directory of checkpoints: keep the last N and the best K, resume, save in the background.

    ``keep_last`` / ``keep_best``: how many of the newest (by step) and of the best (by
    ``monitor``, ``mode`` "min" or "max") to keep, together; the newest is always kept;
    with neither, every checkpoint is kept.  ``name``: a template filled with ``step``
    and the metrics, e.g. ``"epoch{step:03d}-val_loss{val_loss:.4f}"``.  With
    ``async_save=True``, ``save`` returns a :class:`PendingSave` once the state is
    copied, and writing continues in the background.  ``dedup`` (on by default): a shard
    byte-identical to one of an existing checkpoint of the run (a frozen base) is
    hard-linked, not written again; ``dedup=False`` writes every byte (for file systems
    whose hard links misbehave; one that refuses them is detected and written in full).

    A run remembers these settings: each of ``keep_last``, ``keep_best``, ``monitor``,
    ``mode`` and ``name`` left out comes from the run (as its last writer saved them),
    else from the defaults (keep all, no monitor, "min", ``"step{step}"``); one given
    overrides it, and the next ``save`` records it.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int | None = FROM_RUN,
        keep_best: int | None = FROM_RUN,
        monitor: str | None = FROM_RUN,
        mode: str = FROM_RUN,
        name: str = FROM_RUN,
        async_save: bool = False,
        storage_options: dict | None = None,
        dedup: bool = True,
    ) -> None:
        self._storage = _storage_for(directory, storage_options)
        self.directory = self._storage.location
        given = {k: v for k, v in (("keep_last", keep_last), ("keep_best", keep_best), ("monitor", monitor),
                                   ("mode", mode), ("name", name)) if v is not FROM_RUN}
        settings = _settings(given, self._recorded_settings())
        self.keep_last, self.keep_best = settings["keep_last"], settings["keep_best"]
        self.monitor, self.mode, self.name_template = settings["monitor"], settings["mode"], settings["name"]
        self.async_save = async_save
        self.storage_options = storage_options
        if not isinstance(dedup, bool):
            raise InvalidArgumentError(f"dedup must be True or False, not {dedup!r}", key="dedup")
        self.dedup = dedup and getattr(self._storage, "links", True)  # object stores cannot link payloads ...
        self._copies = dedup and getattr(self._storage, "copies", False)  # ... they copy equal shards server-side
        self._shard_index: ShardIndex | None = None  # built from the run's manifests at the first save
        self._policy = retention.policy_for(self.keep_last, self.keep_best, self.monitor, self.mode)
        self._prunes = self.keep_last is not None or self.keep_best is not None
        self._writer = BackgroundWriter(os.path.basename(self.directory)) if async_save else None
        self._binding: _Binding | None = None
        self._run: dict | None = None
        self._cache: dict[str, tuple[tuple, CheckpointInfo | None]] = {}
        self._skipped: dict[str, ModelsafeError] = {}  # entries listing skips, and why
        self._scan_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"<modelsafe.Checkpoints {self.directory!r} keep_last={self.keep_last} keep_best={self.keep_best} "
                f"monitor={self.monitor!r} mode={self.mode!r} name={self.name_template!r}>")

    # -- listing -----------------------------------------------------------------------
    def _info(self, name: str) -> CheckpointInfo | None:
        """Info of committed checkpoint ``name`` from its manifest (cached while the manifest is unchanged).

        An entry whose manifest is damaged, too big, a link or a special file is skipped
        with a warning, and the reason is kept for when it is asked for by name.
        """
        signature = self._storage.manifest_signature(name)
        if signature is None:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == signature:
            return cached[1]
        info = None
        try:
            info = self._read_info(name)
            self._skipped.pop(name, None)
        except ModelsafeError as exc:
            self._skipped[name] = exc
            warnings.warn(f"skipping {self._storage.path(name)}: {exc}", stacklevel=3)
        self._cache[name] = (signature, info)
        return info

    def _read_info(self, name: str) -> CheckpointInfo | None:
        """Read and parse checkpoint ``name``'s manifest (as every reader does); None when it has none."""
        data = self._storage.read_manifest(name)
        if data is None:
            return None
        where = self._storage.checkpoint_path(name)
        return _info_from_manifest(parse_manifest(data, os.path.join(where, MANIFEST)), name, where, len(data))

    def list(self) -> list[CheckpointInfo]:
        """Committed checkpoints, oldest first (ordered by step, then commit time)."""
        with self._scan_lock:
            for _ in range(_RESCANS):
                names = self._storage.entries()
                infos = [info for info in map(self._info, names) if info is not None]
                # a writer committing N+1 then pruning N between our directory read and the
                # manifest reads would leave neither in view: when a listed entry vanished, look again
                if all(self._storage.exists(i) for i in names if self._cached_none(i)):
                    break
            for gone in set(self._cache) - set(names):
                del self._cache[gone]
                self._skipped.pop(gone, None)
        return sorted(infos, key=lambda i: retention.order_key(i.candidate))

    def _cached_none(self, name: str) -> bool:
        cached = self._cache.get(name)
        return cached is None or cached[1] is None

    def latest(self) -> CheckpointInfo | None:
        """The committed checkpoint with the highest step, or None."""
        infos = self.list()
        return infos[-1] if infos else None

    def best(self) -> CheckpointInfo | None:
        """The best committed checkpoint by ``monitor``/``mode``, or None (none has the metric)."""
        if not self.monitor:
            raise InvalidArgumentError(
                f"{self.directory}: the run records no monitor, so no checkpoint is best; pass monitor= to Checkpoints "
                "(the metric that ranks checkpoints)", path=self.directory, key="monitor",
            )
        infos = self.list()
        ranked = retention.rank_best([i.candidate for i in infos], self.monitor, self.mode)
        if not ranked:
            return None
        return next(i for i in infos if i.name == ranked[0].name)

    def info(self, which: Any = "latest") -> CheckpointInfo:
        """The committed checkpoint ``which`` names: ``"latest"``, ``"best"``, a step or a name.

        This is what ``RUN@which`` addresses.  A missing one is a CheckpointNotFoundError;
        a step that several checkpoints hold (runs of older versions) a RunConflictError.

        >>> import tempfile, modelsafe as ms
        >>> ck = ms.Checkpoints(tempfile.mkdtemp())
        >>> _ = ck.save({"a": 1}, step=3)
        >>> ck.info(3).name, ck.info("latest").step
        ('step3', 3)
        >>> ck.close()
        """
        return self._resolve(which)

    def _resolve(self, which: Any) -> CheckpointInfo:
        if isinstance(which, CheckpointInfo):
            return which
        infos = self.list()
        found: CheckpointInfo | None = None
        if which == "latest":
            found = infos[-1] if infos else None
        elif which == "best":
            found = self._best_or_explain()
        elif isinstance(which, int) and not isinstance(which, bool):
            found = self._at_step(infos, which)
        elif isinstance(which, str):
            found = next((i for i in infos if i.name == which), None)
            if found is None and which.isdigit():
                return self._resolve(int(which))
        else:
            raise InvalidArgumentError(f"which must be 'latest', 'best', a step (int) or a checkpoint name, not {which!r}", key="which")
        if found is None and isinstance(which, str) and which in self._skipped:
            raise self._skipped[which]
        if found is None:
            have = ", ".join(i.name for i in infos[-5:]) or "none"
            raise CheckpointNotFoundError(
                f"{self.directory}: no committed checkpoint {which!r} (latest checkpoints: {have})", path=self.directory, key=str(which)
            )
        return found

    def _best_or_explain(self) -> CheckpointInfo:
        """The best checkpoint, or a CheckpointNotFoundError saying why none is best."""
        if not self.monitor:
            raise CheckpointNotFoundError(
                f"{self.directory}: the run records no monitored metric, so no checkpoint is 'best'; pass monitor= "
                "to Checkpoints, or name a step or a checkpoint", path=self.directory, key="best",
            )
        best = self.best()
        if best is None and self.list():
            raise CheckpointNotFoundError(
                f"{self.directory}: no checkpoint records a finite value of the metric {self.monitor!r}, so none is "
                "'best'; name a step or a checkpoint instead", path=self.directory, key="best",
            )
        return best

    def _at_step(self, infos: list[CheckpointInfo], step: int) -> CheckpointInfo | None:
        """The checkpoint of ``step``; several (a run written by an older modelsafe) are an error, never a guess."""
        matches = [i for i in infos if i.step == step]
        if len(matches) > 1:
            names = ", ".join(repr(i.name) for i in matches)
            raise RunConflictError(
                f"{self.directory}: step {step} is held by {len(matches)} checkpoints ({names}); "
                "address one by its name", path=self.directory, key=str(step),
            )
        return matches[0] if matches else None

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
        """The run file, every field checked (CorruptCheckpointError naming it), or None when there is none."""
        data = self._storage.read_run_file()
        return parse_run_file(data, self._storage.path(RUN_FILE)) if data is not None else None

    def _recorded_settings(self) -> dict:
        """The settings the run file holds (none for a new run).

        A damaged run file must not stop anyone from reading the checkpoints (a fresh
        process must still resume): it is a warning here, and the CorruptCheckpointError
        naming it comes from the first write (save, prune), before anything changes.
        """
        try:
            run = self._read_run() or {}
            recorded = {k: run[k] for k in SETTING_DEFAULTS if run.get(k) is not None}
            _check_settings({**SETTING_DEFAULTS, **recorded}, ())
        except (CorruptCheckpointError, InvalidArgumentError) as exc:
            warnings.warn(f"the recorded settings of the run are not used: {exc}", stacklevel=3)
            return {}
        return recorded

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

    def _claim(self, step: int | None, metrics: dict) -> tuple[dict, list, int, str]:
        """Become the run's writer and claim ``step`` (default: one past the latest) under a free name.

        Returns the run record, the committed checkpoints, the step and the name.  The run's
        settings are recorded only once the name is known to be free: a refused save changes nothing.
        """
        if self._writer is not None:
            self._writer.wait()  # one save in flight at a time; re-raises a failed one
        run = self._become_writer()
        infos = self.list()
        if step is None:
            step = infos[-1].step + 1 if infos else 0
        name = format_name(self.name_template, step, metrics)
        self._check_free(infos, name, step, run["run_id"])
        return self._become_writer(record_settings=True), infos, step, name

    def save(self, state: Any = None, *, step: int | None = None, metrics: dict | None = None, metadata: dict | None = None,
             distributed: bool = False, progress: bool = False) -> Any:
        """Save ``state`` as the checkpoint for ``step`` and apply retention.

        Returns the CheckpointInfo, or a PendingSave when ``async_save`` is on (the state
        is copied before this returns).  A failed earlier background save is raised here.
        ``step`` defaults to one past the latest; ``metrics`` fill the name template and
        rank checkpoints.  With a bound ``save`` function, it writes into ``files/``.
        ``distributed=True``: sharded state (DTensor / FSDP2) saved by every rank through
        ``ms.distributed`` (see docs/distributed.md); rank 0 commits and prunes (with
        ``async_save``, in the background: every rank gets a PendingSave).
        ``progress=True`` shows a progress bar (bytes, rate) on stderr while the tensors are written.
        """
        if distributed:
            from .distributed.checkpoints import save_sharded

            return save_sharded(self, state, step=step, metrics=metrics, metadata=metadata)
        # every argument is checked before anything is written or deleted
        check_flag(progress, call="Checkpoints.save", name="progress")
        metrics = self._checked_metrics(metrics)
        step = _checked_step(step)
        format_name(self.name_template, 0 if step is None else step, metrics)
        run, infos, step, name = self._claim(step, metrics)
        rng = RNGState.capture().to_json()  # the global generators as they are now: ck.load_into resumes here
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
            with progress_bar(progress, f"saving {name}", flat.nbytes) as on_bytes:
                return self._write_and_commit(staging, flat, metadata_node, checkpoint, rng, on_bytes)

        if self._writer is not None:
            return self._writer.submit(name, step, job)
        return job()

    def _checked_metrics(self, metrics: dict | None) -> dict:
        """``metrics`` as numbers; the monitored one must be there (a typo would silently disable best-K)."""
        metrics = normalize_metrics(metrics)
        if "step" in metrics:  # the name template's {step} would silently show the step instead
            raise InvalidArgumentError(
                f"{self.directory}: a metric may not be named 'step' (that is the save's step= argument); rename it",
                path=self.directory, key="step",
            )
        if self.monitor is not None and self.monitor not in metrics:
            raise InvalidArgumentError(
                f"{self.directory}: this run monitors {self.monitor!r}, but the metrics of this save are "
                f"{sorted(metrics)}; pass metrics={{{self.monitor!r}: value}} or fix monitor= (nothing was saved)",
                path=self.directory, key=self.monitor,
            )
        return metrics

    def _check_free(self, infos: list[CheckpointInfo], name: str, step: int, run_id: str) -> None:
        """Refuse a save whose name or step another committed checkpoint holds (same name and step: a replace)."""
        same = next((i for i in infos if i.name == name), None)
        if same is not None and same.run_id != run_id:
            raise RunConflictError(
                f"{self.directory}: checkpoint {name!r} exists but was not written by this run; "
                "modelsafe never replaces it. Change name= or remove it yourself", path=self.directory, key=name,
            )
        if same is not None and same.step != step:
            raise RunConflictError(
                f"{self.directory}: checkpoint name {name!r} for step {step} is already taken by step {same.step}; "
                f"put {{step}} in the name template ({self.name_template!r})", path=self.directory, key=name,
            )
        other = next((i for i in infos if i.step == step and i.name != name), None)
        if other is not None:
            raise RunConflictError(
                f"{self.directory}: step {step} is already committed as {other.name!r}, and a step names one "
                f"checkpoint (RUN@{step}); save it under that name to replace it, or delete it first "
                f"(ck.delete({other.name!r}))", path=self.directory, key=other.name,
            )

    def _write_and_commit(self, staging: str, fl: FlatState, metadata_node: Any, checkpoint: dict, rng: dict,
                          on_bytes: OnBytes | None = None) -> CheckpointInfo:
        name = checkpoint["name"]
        try:
            index = self._index() if self.dedup else None
            if index is None and self._copies:  # an object store: shards get identities, the storage copies equal ones
                index = ShardIndex()
            checksums, placement, shards = write_shards(staging, fl, index=index, on_bytes=on_bytes)
            self._warn_refused(index)
            files = hash_files(staging)
            with gc_paused():  # many small objects, none of them cyclic garbage
                manifest = build_manifest(fl, metadata_node, checksums, placement, shards, files, checkpoint)
                manifest["rng"] = rng  # beside the user's tree, never in it: ms.load and ck.load do not see it
                write_manifest(staging, manifest)
            path = self._storage.commit(staging, name, frozenset(index.linked if index is not None else ()))
        except BaseException as exc:
            self._storage.discard(staging)
            if isinstance(exc, OSError) and not isinstance(exc, ModelsafeError):
                where = exc.filename if isinstance(exc.filename, str) and exc.filename.startswith(staging) else None
                action = f"writing {os.path.relpath(where, staging)}" if where else "saving the checkpoint"
                raise storage_error(self._storage.path(name), action, exc) from exc
            raise
        info = self._read_back(name, path)
        if index is not None:
            index.add(path, manifest)
        self._prune()
        return info

    def _index(self) -> ShardIndex:
        """The shards of the run's existing checkpoints by identity (read from their manifests once)."""
        if self._shard_index is None:
            index = ShardIndex()
            for info in self.list():
                with contextlib.suppress(ModelsafeError, OSError):  # unreadable: nothing to share with it
                    data = self._storage.read_manifest(info.name)
                    if data is not None:
                        index.add(info.path, parse_manifest(data, os.path.join(info.path, MANIFEST)))
            self._shard_index = index
        return self._shard_index

    def _warn_refused(self, index: ShardIndex | None) -> None:
        """Say once that the file system refused a hard link: checkpoints are written in full from now on."""
        if index is not None and index.refused is not None and not index.warned:
            index.warned = True
            warnings.warn(
                f"{self.directory}: the file system refused a hard link ({os.strerror(index.refused)}), so unchanged "
                "payloads are written again (no deduplication); pass dedup=False to stop trying", stacklevel=4,
            )

    def _read_back(self, name: str, path: str) -> CheckpointInfo:
        """The info of the checkpoint just committed, read from disk by the readers' parser.

        Retention decides only on checkpoints that read back: if this one does not, the
        save fails here and nothing is deleted.
        """
        try:
            with self._scan_lock:
                self._cache.pop(name, None)
                info = self._read_info(name)
        except ModelsafeError as exc:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint just committed does not read back ({exc}); no checkpoint was deleted. "
                "Check the disk and the run file, then save again", path=path,
            ) from exc
        if info is None:
            raise CorruptCheckpointError(f"{path}: the checkpoint just committed has no manifest; no checkpoint was "
                                         "deleted. Check the disk, then save again", path=path)
        signature = self._storage.manifest_signature(name)
        with self._scan_lock:
            if signature is not None:
                self._cache[name] = (signature, info)
        return info

    def _prune(self) -> list[str]:
        if not self._prunes:
            return []
        run_id = self._run["run_id"] if self._run else None
        ours = [i.candidate for i in self.list() if i.run_id == run_id]
        doomed = retention.to_delete(ours, self._policy)
        for candidate in doomed:
            self._delete_checkpoint(candidate.name)
        return [c.name for c in doomed]

    def delete(self, which: Any) -> CheckpointInfo:
        """Delete one committed checkpoint of this run (as its writer); returns what it was."""
        self._become_writer()
        info = self._resolve(which)
        self._delete_checkpoint(info.name)
        return info

    def _delete_checkpoint(self, name: str) -> None:
        """Delete checkpoint ``name`` and drop its shards from the dedup index."""
        self._storage.delete(name)
        if self._shard_index is not None:
            self._shard_index.forget(self._storage.path(name))

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
        if kwargs and save is None:
            raise InvalidArgumentError(
                f"bind() got keyword arguments {sorted(kwargs)} but no save= function to pass them to", key=sorted(kwargs)[0]
            )
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
        progress: bool = False,
    ) -> Any:
        """Load a checkpoint: ``"latest"``, ``"best"``, a step (int) or a name.

        Returns the saved state; with a bound ``load`` function it is called with the
        checkpoint's ``files/`` directory, and its result is returned when no state was saved.
        ``progress=True`` shows a progress bar (bytes, rate) on stderr while tensors are read.
        """
        from .api import load as ms_load

        info = self._resolve(which)
        with _removal_noticed(info):
            state = ms_load(info.path, map_location=map_location, framework=framework, trusted=trusted,
                            allow_pickle=allow_pickle, verify=verify, progress=progress,
                            storage_options=self.storage_options)
            bound = self._call_bound_load(info, verify)
        return bound if state is None and bound is not None else state

    def _call_bound_load(self, info: CheckpointInfo, verify: bool) -> Any:
        """Call the bound ``load`` with ``files/``, once it holds no link (and, with ``verify``, every checksum matches)."""
        if self._binding is None or self._binding.load is None:
            return None
        with self._local(info, shards=False) as path, CheckpointSource(path, shards=False) as source:
            if not source.manifest["files"] and not os.path.lexists(os.path.join(path, FILES_DIR)):
                return None
            # without verify no file is hashed, but a link out of the checkpoint is still refused
            checks = source.bound_file_checks() if verify else ((None, 0, p) for p in source.bound_tree_problems())
            for _path, _size, problem in checks:
                if problem is not None:
                    raise problem
            return self._binding.load(os.path.join(path, FILES_DIR))

    @contextlib.contextmanager
    def _local(self, info: CheckpointInfo, *, shards: bool = True) -> Any:
        """A local directory holding checkpoint ``info``: its own, or a temporary copy on disk of a remote one.

        Fork and export write local files from a whole copy; a bound ``load`` (``shards=False``)
        gets a copy of the manifest and ``files/`` only.  Loading tensors never copies: remote
        checkpoints are read by byte ranges (:mod:`.directory`).
        """
        if not is_url(info.path):
            yield info.path
            return
        import shutil
        import tempfile

        from .storage.remote import download

        parent = tempfile.mkdtemp(prefix="modelsafe-download-")
        try:
            target = os.path.join(parent, info.name)
            if shards:
                yield download(info.path, target, self.storage_options)
            else:
                yield copy_bound_files(info.path, target, self.storage_options)
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    def load_into(
        self, state: Any, which: Any = "latest", *, strict: bool = True, verify: bool = True, rng: bool = True
    ) -> CheckpointInfo | None:
        """Resume: restore ``state`` in place from the latest checkpoint (or ``which``).

        Returns the CheckpointInfo (its ``report`` holds the load report), or None when the
        run has no committed checkpoint yet, so ``start = info.step + 1 if info else 0``.
        ``rng``: also set the global generators (Python ``random``, numpy's ``np.random``,
        torch CPU and CUDA) to the states ``save`` recorded, so the resumed run draws the
        same numbers as an uninterrupted one; ``rng=False`` leaves them alone.
        """
        if which == "latest" and self.latest() is None:
            return None
        info = self._resolve(which)
        report = None
        with _removal_noticed(info):
            if state is not None:
                from .load_into import load_into as ms_load_into

                report = ms_load_into(state, info.path, strict=strict, verify=verify, storage_options=self.storage_options)
            self._call_bound_load(info, verify)
            if rng:
                self._restore_rng(info)
        return dataclasses.replace(info, report=report)

    def _restore_rng(self, info: CheckpointInfo) -> None:
        """Put back the RNG states recorded with ``info`` (none recorded: a checkpoint of an older modelsafe)."""
        data = self._storage.read_manifest(info.name)
        block = parse_manifest(data, os.path.join(info.path, MANIFEST)).get("rng") if data is not None else None
        if block is not None:
            restore_json(block, info.path)

    # -- fork and export ----------------------------------------------------------------------
    def fork(self, dst: str | os.PathLike, which: Any = "best", *, progress: bool = False, **settings: Any) -> "Checkpoints":
        """Start run ``dst`` from checkpoint ``which`` of this run; returns its Checkpoints.

        The new run's first checkpoint shares the source's files through hard links where
        the file system allows (no byte copied twice) and records its lineage.  ``settings``
        override the keep/monitor/name options, which are copied from this run by default.
        ``progress=True`` shows a progress bar of the bytes linked or copied.
        """
        check_flag(progress, call="Checkpoints.fork", name="progress")
        info = self._resolve(which)
        options = dict(keep_last=self.keep_last, keep_best=self.keep_best, monitor=self.monitor, mode=self.mode,
                       name=self.name_template, async_save=self.async_save, storage_options=self.storage_options, dedup=self.dedup)
        options.update(settings)
        target = Checkpoints(dst, **options)
        if os.path.abspath(target.directory) == os.path.abspath(self.directory):
            raise InvalidArgumentError(f"{self.directory}: fork needs a different destination directory", path=self.directory)
        target._become_writer()
        if target.list():
            target.close()
            raise RunConflictError(f"{target.directory}: already holds checkpoints; fork into a new directory", path=target.directory)
        with _removal_noticed(info), self._local(info) as local, CheckpointSource(local) as source:
            target._fork_from(source, info, self.directory, progress)
        return target

    def _fork_from(self, source: CheckpointSource, info: CheckpointInfo, origin: str, progress: bool = False) -> None:
        """Commit checkpoint ``source`` (of run ``origin``) as this new run's first checkpoint."""
        for _path, _size, problem in source.bound_file_checks():
            if problem is not None:  # links out of the checkpoint, or damage, must not be linked in
                raise problem
        raw, manifest = source.manifest_bytes, source.manifest
        target = self
        lineage = list(manifest["checkpoint"].get("lineage") or []) + [{
            "run": origin,
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
            link_payloads(source, staging, progress=progress)
            write_manifest(staging, manifest)
            target._storage.commit(staging, info.name)
        except BaseException as exc:
            target._storage.discard(staging)
            if isinstance(exc, OSError) and not isinstance(exc, ModelsafeError):
                raise storage_error(target._storage.path(info.name), "forking the checkpoint", exc) from exc
            raise

    def export(self, path: str | os.PathLike, which: Any = "best", *, key: str | None = None,
               progress: bool = False) -> CheckpointInfo:
        """Write the inference part of a checkpoint as one safetensors file.

        Entry ``key`` of a saved dict is copied (by default its ``"model"`` entry, or the whole
        state when it has none), recipe included, with tensor names relative to it (a state_dict
        keeps its keys); a ``key`` the state lacks is an error.
        Checksums are verified on the way; nothing is rebuilt or imported.  ``progress=True``
        shows a progress bar (bytes, rate) on stderr while the file is written.
        """
        check_flag(progress, call="Checkpoints.export", name="progress")
        info = self._resolve(which)
        origin = {"run": self.directory, "checkpoint": info.name, "step": info.step, "metrics": _metrics_to_json(info.metrics)}
        with self._local(info) as local:
            export_checkpoint(local, os.fspath(path), key=key, origin=origin, progress=progress)
        return info


# -- helpers ------------------------------------------------------------------------------

def _checked_step(step: Any) -> int | None:
    if step is None:
        return None
    try:
        value = None if isinstance(step, bool) else operator.index(step)  # numpy integers too
    except TypeError:
        value = None
    if value is None or value < 0:
        raise InvalidArgumentError(f"step must be a non-negative integer, not {step!r}", key="step")
    return value


def _flatten_or_discard(tree: Any, staging: str, storage: RunStorage) -> FlatState:
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


@contextlib.contextmanager
def _removal_noticed(info: CheckpointInfo) -> Any:
    """Turn "not found" about a listed checkpoint that is gone now into CheckpointRemovedError."""
    try:
        yield
    except CheckpointNotFoundError as exc:
        if isinstance(exc, CheckpointRemovedError) or os.path.lexists(info.path):
            raise
        raise removed_error(info.path) from exc


def _is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_FILE))


_REMOVED_RETRIES = 10  # each retry follows a newer commit; a writer that fast would need 10 saves in one open


def _open_run(path: str, selector: str = "latest", storage_options: dict | None = None, **_: Any) -> Any:
    """Checkpoint ``selector`` of the run in ``path`` (``ms.load(run)``, ``ms.load("run@best")``).

    The latest checkpoint, pruned between listing and opening, is looked up again.
    """
    run = Checkpoints(path, storage_options=storage_options)
    for attempt in range(_REMOVED_RETRIES + 1):
        if selector == "latest" and run.latest() is None:
            raise CheckpointNotFoundError(f"{path}: this run has no committed checkpoint yet", path=path)
        info = run.info(selector)
        try:
            with _removal_noticed(info):
                if is_url(info.path):
                    return open_source(info.path, storage_options=storage_options)
                return (directory_opener(info.path) or CheckpointSource)(info.path)  # sharded ones too
        except CheckpointRemovedError:
            if selector != "latest" or attempt == _REMOVED_RETRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


register_directory_opener(_is_run_dir, _open_run)
register_run_opener(_open_run)
