"""Which checkpoints to keep: small pure policy functions, combined with :func:`keep_any`.

A *policy* takes the committed checkpoints of a run (as :class:`Candidate`) and
returns the names it wants kept.  Policies never touch storage, so they are tested
without any I/O and give the same answer in a resumed process as in the original
one: everything they look at (step, time, metrics) comes from committed manifests.

>>> runs = [Candidate(f"s{i}", i, float(i), {"loss": l}) for i, l in enumerate([0.5, 0.2, 0.4, 0.3])]
>>> policy = keep_any(keep_last(1), keep_best(2, "loss", "min"))
>>> policy
KeepAny(policies=(KeepLast(n=1), KeepBest(n=2, monitor='loss', mode='min')))
>>> sorted(policy(runs))
['s1', 's3']
>>> [c.name for c in to_delete(runs, policy)]
['s0', 's2']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .errors import InvalidArgumentError

__all__ = [
    "Candidate",
    "Policy",
    "KeepAll",
    "KeepLast",
    "KeepBest",
    "KeepAny",
    "order_key",
    "newest_first",
    "metric_value",
    "rank_best",
    "keep_all",
    "keep_last",
    "keep_best",
    "keep_any",
    "policy_for",
    "to_delete",
    "MODES",
]

MODES = ("min", "max")


@dataclass(frozen=True)
class Candidate:
    """What retention knows about one committed checkpoint."""

    name: str
    step: int
    time: float
    metrics: Mapping[str, object] = field(default_factory=dict)


Policy = Callable[[Sequence[Candidate]], frozenset]


def order_key(candidate: Candidate) -> tuple:
    """Checkpoints are ordered by step; equal steps by commit time, then name."""
    return (candidate.step, candidate.time, candidate.name)


def newest_first(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=order_key, reverse=True)


def metric_value(candidate: Candidate, monitor: str) -> float | None:
    """The monitored metric as a float, or None when missing or not a finite number."""
    value = candidate.metrics.get(monitor)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def rank_best(candidates: Sequence[Candidate], monitor: str, mode: str) -> list[Candidate]:
    """Candidates with a finite ``monitor`` value, best first; ties go to the newer one."""
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be 'min' or 'max', not {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    scored = [(metric_value(c, monitor), c) for c in candidates]
    ranked = sorted(
        ((v, c) for v, c in scored if v is not None),
        key=lambda vc: (sign * vc[0], -vc[1].step, -vc[1].time, vc[1].name),
    )
    return [c for _, c in ranked]


@dataclass(frozen=True)
class KeepAll:
    """Keep every checkpoint (no limits given)."""

    def __call__(self, candidates: Sequence[Candidate]) -> frozenset:
        return frozenset(c.name for c in candidates)


@dataclass(frozen=True)
class KeepLast:
    """Keep the ``n`` newest checkpoints by step."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InvalidArgumentError(f"keep_last must be >= 0, not {self.n}")

    def __call__(self, candidates: Sequence[Candidate]) -> frozenset:
        return frozenset(c.name for c in newest_first(candidates)[: self.n])


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``n`` best checkpoints by ``monitor`` (``mode`` "min" or "max")."""

    n: int
    monitor: str
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InvalidArgumentError(f"keep_best must be >= 0, not {self.n}")
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode must be 'min' or 'max', not {self.mode!r}")

    def __call__(self, candidates: Sequence[Candidate]) -> frozenset:
        return frozenset(c.name for c in rank_best(candidates, self.monitor, self.mode)[: self.n])


@dataclass(frozen=True)
class KeepAny:
    """Keep what any of ``policies`` keeps."""

    policies: tuple

    def __call__(self, candidates: Sequence[Candidate]) -> frozenset:
        kept: set[str] = set()
        for policy in self.policies:
            kept |= policy(candidates)
        return frozenset(kept)


def keep_all() -> Policy:
    """Keep every checkpoint (no limits given)."""
    return KeepAll()


def keep_last(n: int) -> Policy:
    """Keep the ``n`` newest checkpoints by step."""
    return KeepLast(n)


def keep_best(n: int, monitor: str, mode: str = "min") -> Policy:
    """Keep the ``n`` best checkpoints by ``monitor`` (``mode`` "min" or "max").

    >>> keep_best(2, "val_loss")
    KeepBest(n=2, monitor='val_loss', mode='min')
    """
    return KeepBest(n, monitor, mode)


def keep_any(*policies: Policy) -> Policy:
    """Keep what any of ``policies`` keeps."""
    return KeepAny(policies)


def policy_for(keep_last_n: int | None, keep_best_n: int | None, monitor: str | None, mode: str = "min") -> Policy:
    """The policy of ``Checkpoints(keep_last=..., keep_best=...)``.

    No limits: keep everything.  Otherwise keep the last ``keep_last`` and the best
    ``keep_best`` together, and always the newest one.
    """
    if keep_last_n is None and keep_best_n is None:
        return keep_all()
    parts = [keep_last(max(keep_last_n or 0, 1))]
    if keep_best_n:
        if not monitor:
            raise InvalidArgumentError("keep_best needs monitor= (the metric name to rank checkpoints by)")
        parts.append(keep_best(keep_best_n, monitor, mode))
    return keep_any(*parts)


def to_delete(candidates: Sequence[Candidate], policy: Policy) -> list[Candidate]:
    """Candidates the policy does not keep, oldest first; never the newest one."""
    if not candidates:
        return []
    kept = set(policy(candidates)) | {newest_first(candidates)[0].name}
    return sorted((c for c in candidates if c.name not in kept), key=order_key)
