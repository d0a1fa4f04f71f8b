"""Independent fresh-interpreter jobs (examples, README blocks), started two at a time.

A test module whose checks each need their own interpreter spends most of its time in
those interpreters' imports, one core busy and the other idle while pytest waits.  A
module-scoped fixture hands the jobs to :func:`lanes` and each test waits for its own
result, so two of them run side by side (as tests/integrations already does with its two
fits); every job still runs alone in its own process, checked by its own test.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

LANES = max(1, min(2, os.cpu_count() or 1))


@contextmanager
def lanes(jobs: dict[str, Callable[[], T]]) -> Iterator[dict[str, Future[T]]]:
    """Start ``jobs`` (in their order) at most LANES at a time; on exit, wait for all of them."""
    pool = ThreadPoolExecutor(max_workers=LANES)
    try:
        yield {name: pool.submit(job) for name, job in jobs.items()}
    finally:  # after a stop (pytest -x), jobs not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def selected(request: Any, param: str) -> list:
    """The values of the parametrized argument ``param`` of this module's tests that will run, in their order."""
    values = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and spec is not None and param in spec.params:
            values.append(spec.params[param])
    return values
