"""``modelsafe diff A B``: tensors added, removed and changed (max abs diff), metadata and values."""

from __future__ import annotations

import json
from typing import Any

import click

from ..sources import open_source
from .address import resolve_checkpoint
from .compare import Comparison, MappingDiff, bytes_to_compare, compare
from .errors import ProblemFound
from .output import Column, TableSpec, emit_json, escape, format_number, format_shape, json_option, jsonable, progress, say


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--exit-code", is_flag=True, help="Exit with 1 when A and B differ (like `git diff --exit-code`).")
@json_option
def diff(a: str, b: str, exit_code: bool, as_json: bool) -> None:
    """Compare two files or checkpoints.

    A and B are files, checkpoint directories or RUN@best / RUN@latest / RUN@<step> /
    RUN@<name>.  Tensors with equal checksums are not read; the others are compared
    numerically in float64 (complex via abs) and reported with their largest absolute
    difference.  Exit code 0 unless --exit-code is given and they differ.
    """
    path_a, path_b = resolve_checkpoint(a), resolve_checkpoint(b)
    with open_source(path_a) as src_a, open_source(path_b) as src_b:
        with progress(bytes_to_compare(src_a, src_b), "comparing", unit_bytes=True) as bar:
            result = compare(src_a, src_b, progress=bar)
    if as_json:
        emit_json(result.as_dict())
    else:
        render(result)
    if exit_code and not result.identical:
        raise ProblemFound(f"{a} and {b} differ", kind="different")


def render(result: Comparison) -> None:
    say(f"[bold]a:[/bold] {escape(result.a)}")
    say(f"[bold]b:[/bold] {escape(result.b)}")
    if result.identical:
        say(f"[green]identical[/green]: {result.unchanged:,} tensors, metadata and values equal")
        return
    say(
        f"tensors: {len(result.added):,} added, {len(result.removed):,} removed, "
        f"{len(result.changed):,} changed, {result.unchanged:,} unchanged"
    )
    for name in result.added:
        say(f"  [green]+ {escape(name)}[/green]")
    for name in result.removed:
        say(f"  [red]- {escape(name)}[/red]")
    if result.changed:
        table = TableSpec(
            [Column("tensor"), Column("dtype"), Column("shape"), Column("max abs diff", "right"), Column("differing", "right")],
            title="changed tensors",
        )
        for c in result.changed:
            dtype = f"{c.dtype[0]} -> {c.dtype[1]}" if c.dtype_changed else c.dtype[0]
            shape = f"{format_shape(c.shape[0])} -> {format_shape(c.shape[1])}" if c.shape_changed else format_shape(c.shape[0])
            differing = f"{c.differing:,}/{c.elements:,}" if c.differing is not None else "-"
            table.add(c.name, dtype, shape, format_number(c.max_abs_diff) if c.max_abs_diff is not None else "-", differing)
        table.render()
    _render_mapping("metadata", result.metadata)
    _render_mapping("values", result.values)


def _render_mapping(title: str, diff: MappingDiff) -> None:
    if not diff:
        return
    say(f"[bold]{title}[/bold]")
    for key, value in diff.added.items():
        say(f"  [green]+ {escape(key)}: {escape(_text(value))}[/green]")
    for key, value in diff.removed.items():
        say(f"  [red]- {escape(key)}: {escape(_text(value))}[/red]")
    for key, (old, new) in diff.changed.items():
        say(f"  [yellow]~ {escape(key)}: {escape(_text(old))} -> {escape(_text(new))}[/yellow]")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(jsonable(value))
