"""``modelsafe convert SRC DST``: bring in torch/safetensors/npz/Keras/MXNet files, running no code from them."""

from __future__ import annotations

import os

import click

from .errors import CommandError
from .output import emit_json, escape, human_bytes, json_option, say, stderr_is_terminal


@click.command("convert")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "target", type=click.Choice(["modelsafe", "safetensors"]), default="modelsafe", show_default=True,
              help="modelsafe: the whole tree (optimizer state, epoch, ...); safetensors: plain tensors for other tools.")
@click.option("--framework", default=None, metavar="NAME",
              help="Tensor type recorded in DST, a framework name as ms.load's framework= takes "
                   "(default: torch for torch files when torch is installed).")
@click.option("-f", "--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--max-expansion", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Tensor bytes allowed per byte of SRC (default 8, plus 64 MiB); raise it for a trusted file "
                   "that compresses better, 'inf' turns the check off.")
@json_option
def convert(src: str, dst: str, target: str, framework: str | None, force: bool, max_expansion: float | None,
            as_json: bool) -> None:
    """Convert SRC into a modelsafe file (or plain safetensors) at DST.

    SRC: torch .pt/.pth/.bin (zip or legacy format, read by an allowlist unpickler that
    never runs code; TorchScript is refused), .safetensors or a sharded *.index.json,
    numpy .npz, Keras .weights.h5 / .keras, MXNet .params (no MXNet needed), or a model
    folder holding one of those.  The format is told by the file's first bytes, then by
    its extension.
    """
    from ..convert import convert as run_convert

    if not force and os.path.exists(dst) and not (os.path.exists(src) and os.path.samefile(src, dst)):
        raise CommandError(f"{dst}: already exists; choose another path or pass --force to replace it",
                           kind="StorageError", path=dst)
    limit = {} if max_expansion is None else {"max_expansion": max_expansion}
    summary = run_convert(src, dst, to=target, framework=framework, overwrite=force, progress=stderr_is_terminal(), **limit)
    if as_json:
        emit_json(summary.to_dict())
        return
    say(
        f"converted [bold]{escape(src)}[/bold] ({summary.source_format}) -> [bold]{escape(dst)}[/bold] ({summary.target}): "
        f"{summary.tensors:,} tensors, {human_bytes(summary.tensor_bytes)} of tensor data, "
        f"{human_bytes(summary.file_bytes)} file, {summary.seconds:.2f} s"
    )
    for note in summary.notes:
        say(f"  note: {escape(note)}")
