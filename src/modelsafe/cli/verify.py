"""``modelsafe verify PATH|RUN``: check every checksum and name every corrupt file and tensor.

Unlike ``ms.load``, which stops at the first problem, verify keeps going: every
tensor of every file is checked, and each failure is reported with its file and
tensor.  Exit code 1 when anything is corrupt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import click

from ..checkpoint_dir import MANIFEST, hash_file, load_manifest
from ..errors import CorruptCheckpointError, ModelsafeError
from ..format.reader import FileSource
from ..sources import open_source
from .address import is_checkpoint_dir, is_run_dir, listing, open_run, parse_address, resolve
from .errors import ProblemFound
from .output import emit_json, escape, human_bytes, json_option, progress, say


@dataclass
class Finding:
    """One problem: ``tensor`` is None when the whole file (or checkpoint) is unreadable."""

    file: str
    tensor: str | None
    problem: str
    kind: str = "CorruptCheckpointError"

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

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "name": self.name, "ok": self.ok, "tensors": self.tensors, "unchecked": self.unchecked,
            "bytes": self.bytes, "findings": [f.as_dict() for f in self.findings],
        }


def verify_path(path: str, advance: Callable[[int], None] = lambda n: None) -> TargetReport:
    """Verify one file or checkpoint directory, collecting every failure."""
    report = TargetReport(path)
    if not os.path.isdir(path):
        _verify_file(path, path, report, advance)
    elif _is_checkpoints_layout(path):
        _verify_checkpoint_dir(path, report, advance)
    else:
        _verify_any_source(path, report, advance)
    return report


def _is_checkpoints_layout(path: str) -> bool:
    """True unless manifest.json is readable JSON of another directory layout.

    A damaged manifest counts as ``Checkpoints`` layout, so its damage is reported.
    """
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return True
    return not isinstance(manifest, dict) or "checkpoint" in manifest or "shards" in manifest


def _verify_any_source(path: str, report: TargetReport, advance: Callable[[int], None]) -> None:
    """Any other directory layout with a registered opener: check each record through its Source."""
    try:
        source = open_source(path)
    except (ModelsafeError, OSError) as exc:
        report.findings.append(_finding(path, exc, None))
        return
    with source:
        try:
            buffers = source.buffers(lazy=True)
        except (ModelsafeError, OSError) as exc:
            report.findings.append(_finding(path, exc, None))
            return
        for record in source.records.values():
            shown = os.path.join(path, record.file) if record.file else path
            if record.checksum is None:
                report.unchecked += 1
                continue
            report.tensors += 1
            report.bytes += record.nbytes
            try:
                source.verify_record(record, buffers[record.file])
            except (ModelsafeError, OSError, KeyError) as exc:
                report.findings.append(_finding(shown, exc, record.name))
            advance(record.nbytes)
        verify_files = getattr(source, "verify_files", None)
        if callable(verify_files):
            try:
                verify_files()
            except (ModelsafeError, OSError) as exc:
                report.findings.append(_finding(getattr(exc, "path", None) or path, exc, None))


def _verify_file(path: str, shown: str, report: TargetReport, advance: Callable[[int], None],
                 expected: dict[str, Any] | None = None, shard: str | None = None) -> set[str] | None:
    """Check one safetensors file (header seal, then every tensor).

    Returns the names of the tensors it holds, or None when the file cannot be read at all.

    ``expected`` is a checkpoint manifest's ``tensors`` table, cross-checked when given.
    """
    try:
        source = FileSource(path)
    except (ModelsafeError, OSError) as exc:
        report.findings.append(_finding(shown, exc, None))
        return None
    with source:
        base = source.map_data()
        for record in source.records.values():
            if record.checksum is None:
                report.unchecked += 1
                continue
            report.tensors += 1
            report.bytes += record.nbytes
            if expected is not None:
                spec = expected.get(record.name)
                if not isinstance(spec, dict) or spec.get("file") != shard:
                    report.findings.append(Finding(shown, record.name, f"tensor {record.name!r} is in {shard}, but manifest.json does not place it there"))
                elif spec.get("xxh3") != record.checksum:
                    report.findings.append(Finding(
                        shown, record.name,
                        f"tensor {record.name!r}: manifest.json records checksum {spec.get('xxh3')}, the shard {record.checksum}",
                    ))
            try:
                source.verify_record(record, base)
            except (ModelsafeError, OSError) as exc:
                report.findings.append(_finding(shown, exc, record.name))
            advance(record.nbytes)
        return set(source.records)


def _verify_checkpoint_dir(path: str, report: TargetReport, advance: Callable[[int], None]) -> None:
    try:
        manifest = load_manifest(path)
    except (ModelsafeError, OSError) as exc:
        report.findings.append(_finding(os.path.join(path, MANIFEST), exc, None))
        return
    tensors = manifest["tensors"]
    for shard in manifest["shards"]:
        name = shard["file"]
        shard_path = os.path.join(path, name)
        if not os.path.exists(shard_path):
            report.findings.append(Finding(shard_path, None, f"shard {name} is missing", "CorruptCheckpointError"))
            continue
        seen = _verify_file(shard_path, shard_path, report, advance, expected=tensors, shard=name)
        if seen is None:
            continue  # the shard itself is unreadable; already reported
        for tensor, spec in tensors.items():
            if isinstance(spec, dict) and spec.get("file") == name and tensor not in seen:
                report.findings.append(Finding(shard_path, tensor, f"manifest.json places tensor {tensor!r} in {name}, which does not hold it"))
    for rel, entry in manifest["files"].items():
        file_path = os.path.join(path, *rel.split("/"))
        try:
            if os.path.islink(file_path):
                raise CorruptCheckpointError(f"{file_path}: is a link, but the checkpoint recorded a regular file", path=file_path)
            size, digest = hash_file(file_path)
        except FileNotFoundError:
            report.findings.append(Finding(file_path, None, f"bound file {rel} is missing"))
            continue
        except (ModelsafeError, OSError) as exc:
            report.findings.append(_finding(file_path, exc, None))
            continue
        report.bytes += size
        advance(size)
        if size != entry["size"] or digest != entry["xxh3"]:
            report.findings.append(Finding(
                file_path, None,
                f"bound file {rel} fails its checksum (stored {entry['xxh3']}, {entry['size']} bytes; computed {digest}, {size} bytes)",
            ))


def _finding(path: str, exc: BaseException, tensor: str | None) -> Finding:
    """A finding about file ``path`` (the file being checked) from the error ``exc``."""
    key = getattr(exc, "key", None)
    return Finding(os.fspath(path), tensor if tensor is not None else key, str(exc), type(exc).__name__)


def _data_bytes(path: str) -> int:
    """Tensor bytes of a safetensors file: its size less the header (8-byte prefix + JSON)."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return 0
    if len(prefix) < 8:
        return 0
    return max(0, size - 8 - int.from_bytes(prefix, "little"))


def _total_bytes(path: str) -> int:
    """Bytes verify will hash in ``path`` (tensor data and bound files; no parsing)."""
    if not os.path.isdir(path):
        return _data_bytes(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        bound = os.path.relpath(root, path).split(os.sep)[0] == "files"
        for name in files:
            full = os.path.join(root, name)
            if bound:
                try:
                    total += os.path.getsize(full)
                except OSError:
                    pass
            elif name.endswith(".safetensors"):
                total += _data_bytes(full)
    return total


def verify_targets(targets: list[tuple[str, str | None]]) -> list[TargetReport]:
    """Verify each (path, checkpoint name) with one progress bar over all their bytes."""
    total = sum(_total_bytes(p) for p, _ in targets) if len(targets) < 10_000 else 0
    reports = []
    with progress(total, "verifying", unit_bytes=True) as bar:
        for path, name in targets:
            bar.describe(f"verifying {name or os.path.basename(path)}")
            report = verify_path(path, bar.advance)
            report.name = name
            reports.append(report)
    return reports


def run_targets(path: str) -> list[tuple[str, str | None]]:
    """Every committed checkpoint of the run in ``path``, oldest first, then any whose
    manifest cannot be read (they are committed, so they are checked and reported)."""
    infos, _ = listing(open_run(path))
    targets = [(os.fspath(info.path), info.name) for info in infos]
    listed = {info.name for info in infos}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if not entry.startswith(".") and entry not in listed and os.path.isdir(full) and is_checkpoint_dir(full):
            targets.append((full, entry))
    return targets


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
        targets = [(resolved.path, resolved.info.name if resolved.info is not None else None)]
        kind = "checkpoint" if os.path.isdir(targets[0][0]) else "file"
    reports = verify_targets(targets)
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
        files = {f.file for f in findings}
        bad = sum(1 for r in reports if not r.ok)
        raise ProblemFound(
            f"{len(findings)} problem(s) in {len(files)} file(s) "
            f"({bad} of {len(reports)} {'file' if kind == 'file' else 'checkpoint'}(s) corrupt)",
            kind="corrupt", path=target,
        )


def render(target: str, kind: str, reports: list[TargetReport]) -> None:
    if kind == "run" and not reports:
        say(f"{escape(target)}: the run has no committed checkpoints; nothing to verify")
    for report in reports:
        label = report.name or report.path
        if report.ok:
            extra = f", {report.unchecked:,} without checksums (plain safetensors)" if report.unchecked else ""
            say(f"[green]ok[/green]       {escape(label)}  ({report.tensors:,} tensors, {human_bytes(report.bytes)}{escape(extra)})")
            continue
        say(f"[bold red]CORRUPT[/bold red]  {escape(label)}")
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
