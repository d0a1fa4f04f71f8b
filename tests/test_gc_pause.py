"""gc_paused: the collector is off inside, restored after, nested and concurrent uses counted."""

import gc
import threading

import pytest

from modelsafe.gc_pause import gc_paused


def test_restores_an_enabled_collector_after_nesting_and_errors():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with pytest.raises(KeyError):
            with gc_paused():
                raise KeyError("x")
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_pauses_end_with_the_collector_enabled():
    barrier = threading.Barrier(4)

    def work():
        for _ in range(200):
            with gc_paused():
                barrier.wait() if _ == 0 else None
                assert not gc.isenabled()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()
