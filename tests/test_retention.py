"""Retention: the pure policies (no I/O) and, statefully, the run directory they manage."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import modelsafe as ms
from modelsafe import retention
from modelsafe.retention import Candidate, keep_any, keep_best, keep_last, policy_for, rank_best, to_delete
from modelsafe.storage.commit import STAGING_MARK

# -- pure policies ---------------------------------------------------------------------

metric = st.one_of(st.floats(-10, 10, allow_nan=False), st.just(float("nan")), st.none())


@st.composite
def candidates(draw, min_size=0):
    steps = draw(st.lists(st.integers(0, 60), min_size=min_size, max_size=25, unique=True))
    out = []
    for i, step in enumerate(steps):
        value = draw(metric)
        out.append(Candidate(f"c{step}", step, float(draw(st.integers(0, 5))), {} if value is None else {"loss": value}))
    return out


def finite(c):
    v = c.metrics.get("loss")
    return v is not None and math.isfinite(v)


@given(candidates(), st.integers(0, 6))
def test_keep_last_keeps_the_highest_steps(cands, n):
    kept = keep_last(n)(cands)
    assert kept == {c.name for c in sorted(cands, key=lambda c: c.step)[len(cands) - min(n, len(cands)):]}


@given(candidates(), st.integers(0, 6), st.sampled_from(["min", "max"]))
def test_keep_best_keeps_the_best_finite_values(cands, n, mode):
    kept = keep_best(n, "loss", mode)(cands)
    eligible = [c for c in cands if finite(c)]
    assert len(kept) == min(n, len(eligible))
    assert all(finite(c) for c in cands if c.name in kept)
    worst_kept = [c.metrics["loss"] for c in cands if c.name in kept]
    dropped = [c.metrics["loss"] for c in eligible if c.name not in kept]
    if worst_kept and dropped:
        if mode == "min":
            assert max(worst_kept) <= min(dropped)
        else:
            assert min(worst_kept) >= max(dropped)


def test_rank_best_prefers_the_newer_of_equal_values():
    cands = [Candidate("a", 1, 0.0, {"loss": 0.5}), Candidate("b", 2, 0.0, {"loss": 0.5}), Candidate("c", 3, 0.0, {"loss": 0.7})]
    assert [c.name for c in rank_best(cands, "loss", "min")] == ["b", "a", "c"]
    assert [c.name for c in rank_best(cands, "loss", "max")] == ["c", "b", "a"]


@given(candidates(), st.integers(0, 4), st.integers(0, 4))
def test_combined_policy_bounds_and_newest(cands, last, best):
    policy = policy_for(last, best, "loss", "min")
    doomed = to_delete(cands, policy)
    remaining = [c for c in cands if c not in doomed]
    assert len(remaining) <= max(last, 1) + best or len(remaining) == len(cands)
    if cands:
        newest = max(cands, key=retention.order_key)
        assert newest in remaining
    assert remaining.__len__() + len(doomed) == len(cands)
    # union of the two policies, nothing else
    assert {c.name for c in remaining} == set(keep_any(keep_last(max(last, 1)), keep_best(best, "loss", "min"))(cands)) | (
        {max(cands, key=retention.order_key).name} if cands else set()
    )
    # applying retention again to what is left deletes nothing (stable)
    assert to_delete(remaining, policy) == []
    # deletions come oldest first
    assert doomed == sorted(doomed, key=retention.order_key)


@given(candidates())
def test_no_limits_keeps_everything(cands):
    assert to_delete(cands, policy_for(None, None, None)) == []


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="monitor"):
        policy_for(None, 2, None)
    with pytest.raises(ValueError, match="mode"):
        keep_best(1, "loss", "lowest")
    with pytest.raises(ValueError):
        keep_last(-1)


# -- the run directory, statefully --------------------------------------------------------

KEEP_LAST, KEEP_BEST = 2, 2


class RunMachine(RuleBasedStateMachine):
    """Random saves, resumes (a new Checkpoints object), crashes and failing saves."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="ms-retention-")
        self.step = 0
        self.committed: dict[str, tuple[int, float]] = {}   # every checkpoint known to be committed
        self.inflight = None                                  # async: (handle, step, loss)
        self.ck = self.open()

    ASYNC = False

    def open(self) -> ms.Checkpoints:
        return ms.Checkpoints(self.directory, keep_last=KEEP_LAST, keep_best=KEEP_BEST, monitor="loss",
                              name="s{step:04d}-loss{loss:.3f}", async_save=self.ASYNC)

    def settle(self, block: bool = False) -> bool:
        """Record an async save once it is committed; True when nothing is in flight."""
        if self.inflight is not None and (block or self.inflight[0].done()):
            handle, step, loss = self.inflight
            self.committed[handle.result().name] = (step, loss)
            self.inflight = None
        return self.inflight is None

    def teardown(self) -> None:
        import shutil

        self.ck.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(loss=st.floats(0, 1, allow_nan=False).map(lambda x: round(x, 3)))
    def save(self, loss):
        result = self.ck.save({"w": np.full(3, self.step, np.int32)}, step=self.step, metrics={"loss": loss})
        if self.ASYNC:
            self.settle(block=True)  # save() waited for the previous one: it is committed
            self.inflight = (result, self.step, loss)
        else:
            self.committed[result.name] = (self.step, loss)
        self.step += 1

    @rule()
    def resume(self):
        self.settle(block=True)
        self.ck.close()
        self.ck = self.open()
        latest = self.ck.latest()
        if self.committed:
            assert latest is not None and latest.step == self.step - 1

    @rule(phase=st.sampled_from(["staging", "deleting", "replacing"]))
    def crash(self, phase):
        """A writer killed mid-save or mid-prune: its leftovers stay, its lock goes away."""
        self.settle(block=True)
        ck = self.ck
        ck._become_writer()
        storage = ck._storage
        if phase == "staging":
            staging = storage.stage("s9999-half")
            with open(os.path.join(staging, "state-00001-of-00001.safetensors"), "wb") as f:
                f.write(b"\0" * 100)
        else:
            infos = ck.list()
            if infos:
                victim = infos[0]
                if phase == "deleting":  # a checkpoint retention had already dropped from the policy
                    os.makedirs(os.path.join(self.directory, f".gone{'.modelsafe-del-'}1-abcd"), exist_ok=True)
                else:  # crash between "old aside" and "new in place" of a re-save of the same name
                    os.rename(victim.path, os.path.join(self.directory, f".{victim.name}.modelsafe-old-1-abcd"))
        storage.unlock()  # the kernel drops a dead process's flock
        ck._run = None
        self.ck = self.open()

    @precondition(lambda self: True)
    @rule()
    def failing_save(self):
        def broken(path):
            with open(os.path.join(path, "partial.bin"), "wb") as f:
                f.write(b"x" * 10)
            raise RuntimeError("bound save failed")

        self.settle(block=True)
        self.ck.wait()
        before = [i.name for i in self.ck.list()]
        self.ck.bind(save=broken)
        with pytest.raises(RuntimeError, match="bound save failed"):
            self.ck.save({"w": np.zeros(1)}, step=self.step, metrics={"loss": 0.0})
        self.ck.bind()
        assert [i.name for i in self.ck.list()] == before  # nothing committed, nothing pruned

    @invariant()
    def retention_holds(self):
        settled = self.settle()
        present = {i.name: i for i in self.ck.list()}
        in_flight = 0 if settled else 1  # committed but not pruned yet
        assert len(present) <= KEEP_LAST + KEEP_BEST + in_flight
        known = set(self.committed) | ({n for n in present if n.startswith(f"s{self.step - 1:04d}-")} if not settled else set())
        assert set(present) <= known
        if not self.committed:
            return
        if not settled:
            newest = max(step for step, _ in self.committed.values())
            assert max(i.step for i in present.values()) >= newest
            return
        ranked = sorted(self.committed.items(), key=lambda kv: (kv[1][1], -kv[1][0]))
        best_ever = {name for name, _ in ranked[:KEEP_BEST]}
        assert best_ever <= set(present), "best-K of everything ever saved must survive"
        newest = sorted(self.committed.items(), key=lambda kv: kv[1][0])[-KEEP_LAST:]
        assert {name for name, _ in newest} <= set(present), "the last keep_last must survive"
        if self.ck.best() is not None:
            assert self.ck.best().name == ranked[0][0]

    @invariant()
    def no_leftovers_after_a_writer_starts(self):
        if self.ck._storage.locked and self.settle():  # an async save in flight has its staging dir
            assert not [n for n in os.listdir(self.directory) if STAGING_MARK in n or ".modelsafe-del-" in n]


RunMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
test_run_retention = RunMachine.TestCase


class AsyncRunMachine(RunMachine):
    """The same, with saves in the background: invariants are checked while one is in flight."""

    ASYNC = True


AsyncRunMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
test_async_run_retention = AsyncRunMachine.TestCase


def test_policies_are_values_with_a_readable_repr():
    policy = policy_for(2, 1, "val_loss", "max")
    assert repr(policy) == "KeepAny(policies=(KeepLast(n=2), KeepBest(n=1, monitor='val_loss', mode='max')))"
    assert policy == policy_for(2, 1, "val_loss", "max") and policy != policy_for(2, 1, "val_loss", "min")
    assert repr(policy_for(None, None, None)) == "KeepAll()"
