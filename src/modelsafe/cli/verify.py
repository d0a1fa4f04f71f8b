"""``modelsafe verify PATH|RUN``: check every checksum and name every corrupt file and tensor.

A thin command over :mod:`modelsafe.verification`, the library's one verifier: it
groups the events per file or checkpoint, prints a table (or ``--json``) and exits 1
when anything is wrong.  A checkpoint that retention removes while a live run is
verified is reported as removed, not corrupt.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

import click

from ..errors import ModelsafeError
from ..storage.local import open_regular
from ..verification import Checked, Problem, check, check_listed, run_targets
from .address import is_run_dir, is_url, parse_address, remote_kind, resolve
from .errors import ProblemFound
from .output import emit_json, escape, human_bytes, json_option, progress, say


@dataclass
class Finding:
    """One problem: ``tensor`` is None when the whole file (or checkpoint) is unreadable."""

    file: str
    tensor: str | None
    problem: str
    kind: str = "CorruptCheckpointError"
    corrupt: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tensor": self.tensor, "problem": self.problem, "error": self.kind}


@dataclass
class TargetReport:
    """What verifying one file or checkpoint found."""

    path: str
    name: str | None = None       # checkpoint name inside a run
    tensors: int = 0              # tensors checked against a checksum
    unchecked: int = 0            # tensors without a checksum (plain safetensors)
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    removed: bool = False         # removed by retention while being verified (not a problem)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def corrupt(self) -> bool:
        return any(f.corrupt for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "name": self.name, "ok": self.ok, "removed": self.removed, "tensors": self.tensors,
            "unchecked": self.unchecked, "bytes": self.bytes, "findings": [f.as_dict() for f in self.findings],
        }

    def add(self, event: Checked | Problem, advance: Callable[[int], None]) -> None:
        """Count one verification event."""
        if isinstance(event, Problem):
            if event.removed:
                self.removed = True
                return
            error = event.error
            self.findings.append(Finding(event.file, event.tensor if event.tensor is not None else error.key,
                                         str(error), "NotModelsafeFile" if event.other_format else type(error).__name__,
                                         event.corrupt))
            return
        if event.tensor is None:  # a bound file
            self.bytes += event.nbytes
        elif not event.has_checksum:
            self.unchecked += 1
            return
        else:
            self.tensors += 1
            self.bytes += event.nbytes
        advance(event.nbytes)


def verify_path(path: str, advance: Callable[[int], None] = lambda n: None, *, listed: bool = False,
                shared: dict | None = None) -> TargetReport:
    """Verify one file or checkpoint directory, collecting every failure (``listed``: named by a run listing;
    ``shared``: results of shard files already hashed in this verify run, see :func:`check`)."""
    report = TargetReport(path)
    for event in (check_listed(path, shared) if listed else check(path, shared)):
        report.add(event, advance)
    return report


def _data_bytes(path: str, *, follow_symlinks: bool = False) -> int:
    """Tensor bytes of a safetensors file: its size less the header (8-byte prefix + JSON).

    Only for the progress bar: a link (inside a checkpoint) or a special file counts 0.
    """
    try:
        fd = open_regular(path, follow_symlinks=follow_symlinks)
    except (ModelsafeError, OSError):
        return 0
    try:
        prefix = os.pread(fd, 8, 0)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if len(prefix) < 8:
        return 0
    return max(0, size - 8 - int.from_bytes(prefix, "little"))


def _total_bytes(path: str) -> int:
    """Bytes verify will hash in ``path`` (tensor data and bound files; no parsing, no link followed)."""
    if not os.path.isdir(path):
        return _data_bytes(path, follow_symlinks=True)
    total = 0
    for root, _dirs, files in os.walk(path):
        bound = os.path.relpath(root, path).split(os.sep)[0] == "files"
        for name in files:
            full = os.path.join(root, name)
            if bound:
                try:
                    st = os.lstat(full)
                    total += st.st_size if stat.S_ISREG(st.st_mode) else 0
                except OSError:
                    pass
            elif name.endswith(".safetensors"):
                total += _data_bytes(full)
    return total


def verify_targets(targets: list[tuple[str, str | None, ModelsafeError | None]], *, listed: bool = False) -> list[TargetReport]:
    """Verify each (path, checkpoint name, listing error) with one progress bar over all their bytes."""
    total = sum(_total_bytes(p) for p, _, error in targets if error is None) if len(targets) < 10_000 else 0
    reports = []
    shared: dict = {}  # shards that checkpoints share (dedup) are hashed once
    with progress(total, "verifying", unit_bytes=True) as bar:
        for path, name, error in targets:
            bar.describe(f"verifying {name or os.path.basename(path)}")
            if error is not None:
                report = TargetReport(path)
                report.add(Problem(os.fspath(error.path or path), None, error), bar.advance)
            else:
                report = verify_path(path, bar.advance, listed=listed, shared=shared)
            report.name = name
            reports.append(report)
    return reports


@click.command("verify")
@click.argument("target")
@json_option
def verify(target: str, as_json: bool) -> None:
    """Check every checksum of a file, a checkpoint or a whole run.

    TARGET is a file, a checkpoint directory, a run directory (every checkpoint is
    checked) or RUN@best / RUN@latest / RUN@<step> / RUN@<name>.  Every corrupt file and
    tensor is named; exit code 1 when anything is corrupt.
    """
    address = parse_address(target)
    if address.selector is None and is_run_dir(address.path):
        targets = run_targets(address.path)
        kind = "run"
    else:
        resolved = resolve(target)
        targets = [(resolved.path, resolved.info.name if resolved.info is not None else None, None)]
        path = targets[0][0]
        kind = "checkpoint" if (remote_kind(path) == "checkpoint" if is_url(path) else os.path.isdir(path)) else "file"
    listed = kind == "run" or address.selector is not None
    reports = verify_targets(targets, listed=listed)  # URLs are checked by byte ranges, nothing downloaded
    findings = [f for r in reports for f in r.findings]
    if as_json:
        emit_json({
            "target": target, "kind": kind, "ok": not findings,
            "checked": {"targets": len(reports), "tensors": sum(r.tensors for r in reports), "bytes": sum(r.bytes for r in reports)},
            "results": [r.as_dict() for r in reports],
        })
    else:
        render(target, kind, reports)
    if findings:
        raise ProblemFound(_summary(kind, reports), kind="corrupt" if any(r.corrupt for r in reports) else "error",
                           path=target)


def _summary(kind: str, reports: list[TargetReport]) -> str:
    findings = [f for r in reports for f in r.findings]
    noun = "file" if kind == "file" else "checkpoint"
    corrupt = sum(1 for r in reports if r.corrupt)
    other = sum(1 for r in reports if not r.ok and not r.corrupt)
    parts = [f"{corrupt} of {len(reports)} {noun}(s) corrupt"] if corrupt else []
    if other:
        parts.append(f"{other} not modelsafe file(s), with no checksums to verify")
    return f"{len(findings)} problem(s) in {len({f.file for f in findings})} file(s) ({'; '.join(parts)})"


def render(target: str, kind: str, reports: list[TargetReport]) -> None:
    if kind == "run" and not reports:
        say(f"{escape(target)}: the run has no committed checkpoints; nothing to verify")
    for report in reports:
        label = report.name or report.path
        if report.removed and report.ok:
            say(f"[yellow]removed[/yellow]  {escape(label)}  (removed by the run's retention while being verified; not damaged)")
            continue
        if report.ok:
            extra = f", {report.unchecked:,} without checksums (plain safetensors)" if report.unchecked else ""
            say(f"[green]ok[/green]       {escape(label)}  ({report.tensors:,} tensors, {human_bytes(report.bytes)}{escape(extra)})")
            continue
        say(f"[bold red]CORRUPT[/bold red]  {escape(label)}" if report.corrupt else f"[bold red]NOT CHECKED[/bold red]  {escape(label)}")
        files: dict[str, list[Finding]] = {}
        for f in report.findings:
            files.setdefault(f.file, []).append(f)
        for file, found in files.items():
            say(f"  [red]{escape(file)}[/red]")
            for f in found:
                text = _short(f.problem, f.file)
                if f.tensor is not None and f"{f.tensor!r}" not in text:
                    text = f"tensor {f.tensor!r}: {text}"
                say(f"    {escape(text)}")
    bad = [r for r in reports if not r.ok]
    if reports and not bad:
        tensors = sum(r.tensors for r in reports)
        what = "checkpoint" if kind in ("run", "checkpoint") else "file"
        say(f"[bold green]all checksums match[/bold green]: {len(reports)} {what}(s), {tensors:,} tensors")


def _short(problem: str, file: str) -> str:
    """The message without its leading ``file:`` (already shown)."""
    prefix = f"{file}: "
    return problem[len(prefix):] if problem.startswith(prefix) else problem
