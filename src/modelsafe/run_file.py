"""The run file ``.modelsafe-run.json``: run id, lineage and the settings a run was created with.

Every field is checked on read, so a damaged or hostile run file is one clear
:class:`CorruptCheckpointError` naming it — never a wrong type reaching the writer,
which copies ``run_id`` and ``lineage`` into every checkpoint it commits.

>>> parse_run_file(b'{"run_id": "1a2b", "lineage": []}', "run/.modelsafe-run.json")["run_id"]
'1a2b'
"""

from __future__ import annotations

from typing import Any

from .errors import CorruptCheckpointError

__all__ = ["parse_run_file", "check_lineage", "MAX_LINEAGE", "MAX_TEXT"]

MAX_LINEAGE = 10_000   # forks of forks; a real lineage is a handful of entries
MAX_TEXT = 4096        # any string field (paths, names, ids, templates)

# (field, allowed types, what it must be) of the optional settings; run_id is required
_SETTINGS = {
    "format": ((str,), "a string"),
    "created": ((str,), "a time string"),
    "monitor": ((str, type(None)), "a metric name or null"),
    "mode": ((str,), "'min' or 'max'"),
    "keep_last": ((int, type(None)), "a non-negative integer or null"),
    "keep_best": ((int, type(None)), "a non-negative integer or null"),
    "name": ((str,), "a name template string"),
}
_LINEAGE_FIELDS = {
    "run": (str,), "run_id": (str, type(None)), "checkpoint": (str,), "step": (int,), "manifest_xxh3": (str,),
}


def _bad(path: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: the run file is damaged: {what}. Its checkpoints are untouched; restore the run file from a "
        "backup, or delete it (the next writer starts a new run id, and the old checkpoints are then kept, "
        "never pruned, as another run's)",
        path=path,
    )


def _text_ok(value: Any) -> bool:
    return not isinstance(value, str) or len(value) <= MAX_TEXT


def check_lineage(lineage: Any, path: str, where: str = "lineage") -> list:
    """``lineage`` checked: a list of {run, run_id, checkpoint, step, manifest_xxh3} objects."""
    if not isinstance(lineage, list) or len(lineage) > MAX_LINEAGE:
        raise _lineage_error(path, where, f"is not a list of at most {MAX_LINEAGE} entries")
    for index, entry in enumerate(lineage):
        if not isinstance(entry, dict):
            raise _lineage_error(path, where, f"entry {index} is not an object")
        for key, kinds in _LINEAGE_FIELDS.items():
            value = entry.get(key)
            if type(value) not in kinds or not _text_ok(value) or (key == "step" and value < 0):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise _lineage_error(path, where, f"entry {index}: {key!r} is {str(value)[:50]!r}, not a {names}")
    return lineage


def _lineage_error(path: str, where: str, what: str) -> CorruptCheckpointError:
    if where == "lineage":
        return _bad(path, f"'lineage' {what}")
    return CorruptCheckpointError(
        f"{path}: {where} {what}; the checkpoint is damaged. Load an earlier checkpoint or restore it from a backup",
        path=path,
    )


def parse_run_file(data: bytes, path: str) -> dict:
    """The run file's fields, every one checked; CorruptCheckpointError naming ``path`` otherwise."""
    import json

    try:
        run = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"it is not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(run, dict):
        raise _bad(path, "it is not a JSON object")
    run_id = run.get("run_id")
    if not isinstance(run_id, str) or not run_id or not _text_ok(run_id):
        raise _bad(path, f"'run_id' is {str(run_id)[:50]!r}, not an id string")
    for key, (kinds, what) in _SETTINGS.items():
        if key not in run:
            continue
        value = run[key]
        if type(value) not in kinds or not _text_ok(value):
            raise _bad(path, f"{key!r} is {str(value)[:50]!r}, not {what}")
    if run.get("mode", "min") not in ("min", "max"):
        raise _bad(path, f"'mode' is {str(run['mode'])[:50]!r}, not 'min' or 'max'")
    for key in ("keep_last", "keep_best"):
        if isinstance(run.get(key), int) and run[key] < 0:
            raise _bad(path, f"{key!r} is negative")
    check_lineage(run.get("lineage", []), path)
    return run
