"""Commands on runs of checkpoints: ``ls``, ``prune``, ``fork`` and ``export``.

All of them go through ``ms.Checkpoints`` (listing reads manifest.json files only,
never a shard) and :mod:`modelsafe.retention` (which checkpoints a prune keeps).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import click

from .. import retention
from ..addresses import is_url
from ..checkpoint_dir import disk_usage
from ..errors import CheckpointNotFoundError
from .address import Resolved, is_checkpoint_dir, listing, open_run, parse_address, resolve_run, run_settings, select
from .errors import UsageProblem
from .output import Column, TableSpec, emit_json, escape, format_time, human_bytes, json_option, say, stderr_is_terminal

_MODE = click.Choice(["min", "max"])


# -- the checkpoint table --------------------------------------------------------------

def info_dict(info: Any, *, best: bool = False, latest: bool = False, new_bytes: int | None = None) -> dict[str, Any]:
    """A CheckpointInfo as JSON-ready data (``new_bytes``, when given: what it holds that no older checkpoint shares)."""
    extra = {} if new_bytes is None else {"new_bytes": new_bytes}
    return {
        "name": info.name,
        "step": info.step,
        "time": info.time.isoformat() if hasattr(info.time, "isoformat") else info.time,
        "metrics": dict(info.metrics),
        "size": info.size,
        **extra,
        "path": os.fspath(info.path),
        "best": best,
        "latest": latest,
    }


def checkpoint_table(infos: list[Any], *, best: str | None = None, latest: str | None = None, title: str | None = None,
                     new_bytes: list[int] | None = None) -> TableSpec:
    """Table of CheckpointInfo rows: name, step, time, one column per metric, size, (new bytes), marks."""
    metric_names: list[str] = []
    for info in infos:
        for key in info.metrics:
            if key not in metric_names:
                metric_names.append(key)
    columns = [Column("name"), Column("step", "right"), Column("time")]
    columns += [Column(m, "right") for m in metric_names]
    columns += [Column("size", "right")] + ([Column("new", "right")] if new_bytes is not None else []) + [Column("marks")]
    table = TableSpec(columns, title=title)
    for position, info in enumerate(infos):
        marks = [m for m, on in (("best", info.name == best), ("latest", info.name == latest)) if on]
        cells = [info.name, str(info.step), format_time(info.time)]
        cells += [exact_number(info.metrics[m]) if m in info.metrics else "" for m in metric_names]
        cells += [human_bytes(info.size)] + ([human_bytes(new_bytes[position])] if new_bytes is not None else [])
        cells += [" ".join(marks)]
        table.add(*cells, style="bold" if marks else None)
    return table


def exact_number(value: Any) -> str:
    """A metric as recorded: the shortest text that reads back as the same number (``repr``).

    Rounding here would show 1.084 for a checkpoint named ``...loss1.0845``.

    >>> exact_number(1.0845), exact_number(0.1 + 0.2), exact_number(3), exact_number(float("nan"))
    ('1.0845', '0.30000000000000004', '3', 'nan')
    """
    return repr(value) if isinstance(value, float) else str(value)


def _best_name(run: Any, infos: list[Any]) -> str | None:
    if not run.monitor or not infos:
        return None
    ranked = retention.rank_best([i.candidate for i in infos], run.monitor, run.mode)
    return ranked[0].name if ranked else None


# -- ls ----------------------------------------------------------------------------------

@click.command("ls")
@click.argument("run")
@click.option("--monitor", metavar="METRIC", help="Metric that marks the best checkpoint (default: the run's own).")
@click.option("--mode", type=_MODE, help="Whether the best has the lowest (min) or highest (max) metric.")
@json_option
def ls(run: str, monitor: str | None, mode: str | None, as_json: bool) -> None:
    """List the committed checkpoints of RUN: name, step, time, metrics, size, new bytes, best/latest.

    Reads each checkpoint's manifest.json only; no shard is opened.  "new" is what a
    checkpoint holds that no older one shares (deduplicated shards are hard links), and
    the run's total counts each file on disk once.
    """
    path = resolve_run(run)
    checkpoints = open_run(path, monitor=monitor, mode=mode)
    infos, problems = listing(checkpoints)
    if monitor:
        _check_monitor_is_recorded(infos, monitor)
    best = _best_name(checkpoints, infos)
    latest = infos[-1].name if infos else None
    settings = run_settings(path)
    if is_url(path):  # no hard links on object stores: every checkpoint's bytes are its own
        new_bytes, disk_bytes = [i.size for i in infos], sum(i.size for i in infos)
    else:
        new_bytes, disk_bytes = disk_usage([os.fspath(i.path) for i in infos])
    if as_json:
        emit_json({
            "run": path,
            "monitor": checkpoints.monitor,
            "mode": checkpoints.mode,
            "settings": {k: settings.get(k) for k in ("keep_last", "keep_best", "name") if k in settings},
            "lineage": settings.get("lineage", []),
            "checkpoints": [info_dict(i, best=i.name == best, latest=i.name == latest, new_bytes=n)
                            for i, n in zip(infos, new_bytes)],
            "run_disk_bytes": disk_bytes,
            "unreadable": problems,
        })
        return
    if not infos:
        say(f"{escape(path)}: no committed checkpoints")
    else:
        facts = [f"{len(infos)} checkpoint(s)", f"{human_bytes(sum(i.size for i in infos))}",
                 f"{human_bytes(disk_bytes)} on disk"]
        if checkpoints.monitor:
            facts.append(f"best by {checkpoints.monitor} ({checkpoints.mode})")
        for key in ("keep_last", "keep_best"):
            if settings.get(key) is not None:
                facts.append(f"{key}={settings[key]}")
        say(f"[bold]{escape(path)}[/bold]  {escape(', '.join(facts))}")
        checkpoint_table(infos, best=best, latest=latest, new_bytes=new_bytes).render()
    for parent in settings.get("lineage") or []:
        if isinstance(parent, dict):
            say(f"forked from {escape(parent.get('run'))}@{escape(parent.get('checkpoint'))} (step {escape(parent.get('step'))})")
    for problem in problems:
        say(f"[yellow]unreadable:[/yellow] {escape(problem)}")


# -- prune ---------------------------------------------------------------------------------

@click.command("prune")
@click.argument("run")
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N", help="Keep the N newest checkpoints (by step).")
@click.option("--keep-best", type=click.IntRange(min=0), metavar="K", help="Keep the K best checkpoints by --monitor.")
@click.option("--monitor", metavar="METRIC", help="Metric ranking checkpoints for --keep-best (default: the run's own).")
@click.option("--mode", type=_MODE, help="min: lower is better (default); max: higher is better.")
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be deleted.")
@json_option
def prune(run: str, keep_last: int | None, keep_best: int | None, monitor: str | None, mode: str | None,
          dry_run: bool, as_json: bool) -> None:
    """Delete checkpoints of RUN except the last N and the best K (together).

    The newest checkpoint is never deleted.  Checkpoints are ordered by the step in
    their committed manifest.  Takes the run's writer lock, so it refuses to run while
    a training process is saving into RUN.
    """
    if keep_last is None and keep_best is None:
        raise UsageProblem("say what to keep: --keep-last N and/or --keep-best K (with --monitor)")
    path = resolve_run(run)
    checkpoints = open_run(path, monitor=monitor, mode=mode)
    if keep_best and not checkpoints.monitor:
        raise UsageProblem("--keep-best needs --monitor METRIC (this run records no monitored metric)")
    policy = retention.policy_for(keep_last, keep_best, checkpoints.monitor, checkpoints.mode)
    infos, problems = listing(checkpoints)
    if keep_best:
        _check_monitor_is_recorded(infos, checkpoints.monitor)
    by_name = {i.name: i for i in infos}
    doomed = [by_name[c.name] for c in retention.to_delete([i.candidate for i in infos], policy)]
    kept = [i for i in infos if i.name not in {d.name for d in doomed}]
    # files kept checkpoints share (dedup hard links) free nothing: count what only the doomed hold
    if is_url(path):  # no shared (hard-linked) payloads on object stores
        freed = sum(i.size for i in infos) - sum(i.size for i in kept)
    else:
        freed = disk_usage([os.fspath(i.path) for i in infos])[1] - disk_usage([os.fspath(i.path) for i in kept])[1]
    if not dry_run and doomed:
        delete_checkpoints(path, [i.name for i in doomed])
    if as_json:
        emit_json({
            "run": path, "dry_run": dry_run,
            "deleted": [] if dry_run else [info_dict(i) for i in doomed],
            "would_delete": [info_dict(i) for i in doomed] if dry_run else [],
            "kept": [info_dict(i) for i in kept],
            "unreadable": problems,
        })
        return
    verb = "would delete" if dry_run else "deleted"
    if not doomed:
        say(f"{escape(path)}: nothing to delete; keeping all {len(infos)} checkpoint(s)")
    for info in doomed:
        say(f"{verb} {escape(info.name)} (step {info.step}, {human_bytes(info.size)})")
    if doomed:
        say(f"{verb} {len(doomed)} checkpoint(s), {human_bytes(freed)}; kept {len(kept)}: {escape(', '.join(i.name for i in kept))}")
    for problem in problems:
        say(f"[yellow]unreadable (left alone):[/yellow] {escape(problem)}")


def _check_monitor_is_recorded(infos: list, monitor: str) -> None:
    """A monitor no checkpoint records (a typo) ranks nothing (and in prune would delete the best): refuse it."""
    if infos and not any(monitor in info.metrics for info in infos):
        recorded = sorted({name for info in infos for name in info.metrics})
        raise UsageProblem(
            f"--monitor {monitor}: no checkpoint of this run records that metric, so none ranks as best; "
            f"its checkpoints record: {', '.join(recorded) or 'no metrics'}"
        )


def delete_checkpoints(run_path: str, names: Iterable[str]) -> None:
    """Delete committed checkpoints by name through ``Checkpoints.delete`` (writer lock held).

    The deleting manager is opened with the run's recorded settings only, so a prune with
    ``--monitor``/``--mode`` leaves the run's own settings as they were.
    """
    writer = open_run(run_path)
    try:
        for name in names:
            writer.delete(name)
    finally:
        writer.close()


# -- fork -------------------------------------------------------------------------------------

@click.command("fork")
@click.argument("src")
@click.argument("dst")
@click.option("--from", "which", metavar="WHICH", help="best, latest, a step or a name (default: best, or latest when the run has no metric).")
@json_option
def fork(src: str, dst: str, which: str | None, as_json: bool) -> None:
    """Start run DST from one checkpoint of run SRC (SRC may be RUN@best, RUN@<step>, ...).

    The new run's first checkpoint shares the source's files (hard links where the file
    system allows) and records where it came from.
    """
    address = parse_address(src)
    if address.selector is not None and which is not None:
        raise UsageProblem(f"give the checkpoint once: either {src!r} or --from {which}")
    source = _checkpoint_in_run(address.path, address.selector or which, "fork")
    checkpoints, info = source.run, source.info
    run_path = checkpoints.directory
    new_run = checkpoints.fork(dst, which=info, progress=stderr_is_terminal())  # errors reach the one error map
    try:
        first = new_run.latest()
    finally:
        new_run.close()
    if as_json:
        emit_json({"source": info_dict(info), "run": os.fspath(new_run.directory), "checkpoint": info_dict(first) if first else None})
        return
    say(f"forked {escape(run_path)}@{escape(info.name)} (step {info.step}) -> {escape(new_run.directory)}")


def _default_which(checkpoints: Any) -> str:
    return "best" if checkpoints.monitor else "latest"


# -- export -------------------------------------------------------------------------------------

@click.command("export")
@click.argument("source")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--from", "which", metavar="WHICH", help="For a run: best, latest, a step or a name (default: best, or latest when the run has no metric).")
@click.option("--key", metavar="NAME", default=None,
              help="Entry of the saved dict to export (an error when it has none).  "
                   "Default: the 'model' entry, or the whole state when it has none.")
@json_option
def export(source: str, out: str, which: str | None, key: str | None, as_json: bool) -> None:
    """Write the inference weights (+ recipe) of a checkpoint as one safetensors file.

    SOURCE is a run (RUN, RUN@best, ...) or a checkpoint directory.  One entry of the
    saved state (see --key) is exported with tensor names relative to it; checksums
    are verified on the way; nothing from the file is imported or run.
    """
    address = parse_address(source)
    if address.selector is not None and which is not None:
        raise UsageProblem(f"give the checkpoint once: either {source!r} or --from {which}")
    target = _checkpoint_in_run(address.path, address.selector or which, "export")
    info = target.run.export(out, which=target.info, key=key, progress=stderr_is_terminal())
    size = os.path.getsize(out)
    if as_json:
        emit_json({"source": info_dict(info), "output": out, "bytes": size})
        return
    say(f"exported {escape(info.name)} (step {info.step}) -> {escape(out)} ({human_bytes(size)})")


def _checkpoint_in_run(path: str, which: str | None, command: str) -> Resolved:
    """The run and checkpoint ``path`` (a run or a checkpoint directory) and ``which`` name."""
    if is_checkpoint_dir(path):  # a checkpoint directory: its run is the parent directory
        if which is not None:
            raise UsageProblem(f"{path!r} is one checkpoint; --from picks a checkpoint of a run")
        if is_url(path):
            run_path, _, name = path.rstrip("/").rpartition("/")
            return _in_run(run_path, name)
        run_path = os.path.dirname(os.path.abspath(path))
        return _in_run(run_path, os.path.basename(os.path.abspath(path)))
    if os.path.isfile(path):
        raise UsageProblem(
            f"{path!r} is a single file; {command} takes a run or a checkpoint directory"
            + (" (a single file already is a safetensors file: use `modelsafe convert` to rewrite it)" if command == "export" else "")
        )
    run_path = resolve_run(path)
    checkpoints = open_run(run_path)
    return Resolved("", checkpoints, select(checkpoints, run_path, which or _default_which(checkpoints)))


def _in_run(run_path: str, name: str) -> Resolved:
    checkpoints = open_run(run_path)
    try:
        info = select(checkpoints, run_path, name)
    except CheckpointNotFoundError:
        raise CheckpointNotFoundError(f"{run_path}/{name}: not a committed checkpoint of its run", path=run_path) from None
    return Resolved(os.fspath(info.path), checkpoints, info)
