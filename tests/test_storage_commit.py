"""storage.commit: staging, atomic commit and replace, atomic delete, the writer lock, leftovers."""

from __future__ import annotations

import os

import pytest

from modelsafe.storage import commit
from modelsafe.storage.commit import LocalRunStorage, RunLockedError


def committed(storage: LocalRunStorage, name: str, content: str) -> str:
    staging = storage.stage(name)
    with open(os.path.join(staging, "manifest.json"), "w") as f:
        f.write(content)
    return storage.commit(staging, name)


def test_stage_is_hidden_and_commit_makes_it_visible(tmp_path):
    storage = LocalRunStorage(tmp_path)
    storage.lock()
    staging = storage.stage("ck")
    assert os.path.basename(staging).startswith(".ck.modelsafe-tmp-") and storage.entries() == []
    open(os.path.join(staging, "manifest.json"), "w").write("1")
    storage.commit(staging, "ck")
    assert storage.entries() == ["ck"] and storage.read_manifest("ck") == b"1"
    storage.unlock()


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_checkpoint_never_leaves_it_missing(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(commit, "_exchange", lambda a, b: False)
    storage = LocalRunStorage(tmp_path)
    storage.lock()
    committed(storage, "ck", "old")
    committed(storage, "ck", "new")
    assert storage.read_manifest("ck") == b"new" and sorted(os.listdir(tmp_path)) == [".modelsafe.lock", "ck"]
    storage.unlock()


def test_a_crash_between_the_fallback_renames_is_invisible_and_repaired(tmp_path):
    storage = LocalRunStorage(tmp_path)
    storage.lock()
    committed(storage, "ck", "old")
    os.rename(tmp_path / "ck", tmp_path / ".ck.modelsafe-old-1-abcd")  # killed right here
    storage.unlock()
    reader = LocalRunStorage(tmp_path)
    assert reader.entries() == ["ck"] and reader.read_manifest("ck") == b"old"  # readers still see it
    writer = LocalRunStorage(tmp_path)
    writer.lock()
    assert writer.clean_leftovers() == [".ck.modelsafe-old-1-abcd"]
    assert (tmp_path / "ck" / "manifest.json").read_text() == "old"
    writer.unlock()


def test_delete_is_atomic_and_leftovers_are_cleaned(tmp_path):
    storage = LocalRunStorage(tmp_path)
    storage.lock()
    committed(storage, "a", "1")
    committed(storage, "b", "2")
    storage.delete("a")
    storage.delete("missing")  # nothing to do
    assert storage.entries() == ["b"]
    os.makedirs(tmp_path / ".b.modelsafe-del-9-dead")
    os.makedirs(tmp_path / ".c.modelsafe-tmp-9-dead")
    (tmp_path / "user-notes.txt").write_text("mine")
    (tmp_path / ".hidden-user-dir").mkdir()
    assert sorted(storage.clean_leftovers()) == [".b.modelsafe-del-9-dead", ".c.modelsafe-tmp-9-dead"]
    assert sorted(os.listdir(tmp_path)) == [".hidden-user-dir", ".modelsafe.lock", "b", "user-notes.txt"]
    storage.unlock()


def test_one_writer_at_a_time_and_the_lock_goes_with_the_writer(tmp_path):
    first, second = LocalRunStorage(tmp_path), LocalRunStorage(tmp_path)
    first.lock()
    with pytest.raises(RunLockedError, match=f"holder: pid {os.getpid()}"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


def test_writing_needs_the_lock(tmp_path):
    storage = LocalRunStorage(tmp_path)
    with pytest.raises(Exception, match="without holding the run lock"):
        storage.stage("x")


def test_a_missing_run_lists_nothing(tmp_path):
    assert LocalRunStorage(tmp_path / "nope").entries() == []
