"""``modelsafe verify``: every corrupt file and tensor is named; exit 1 (modelsafe.cli.verify)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import modelsafe as ms

from cli_support import flip_byte, invoke, make_run, run_process, tensor_span

SHARD = "state-00001-of-00001.safetensors"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    ms.save({f"layer{i}.weight": np.full((8, 8), i, np.float32) for i in range(5)}, path, metadata={"k": "v"})
    return path


def test_clean_file_passes(model_file):
    result = invoke("verify", model_file)
    assert result.code == 0, result.err
    assert "ok" in result.out and "5 tensors" in result.out and "all checksums match" in result.out
    document = invoke("verify", model_file, "--json").json()
    assert document["ok"] is True and document["kind"] == "file"
    assert document["checked"] == {"targets": 1, "tensors": 5, "bytes": 5 * 256}


def test_every_corrupt_tensor_is_named_not_only_the_first(model_file):
    for name in ("layer1.weight", "layer3.weight", "layer4.weight"):
        begin, end = tensor_span(model_file, name)
        flip_byte(model_file, (begin + end) // 2)
    result = invoke("verify", model_file)
    assert result.code == 1
    for name in ("layer1.weight", "layer3.weight", "layer4.weight"):
        assert f"'{name}'" in result.out
    for name in ("layer0.weight", "layer2.weight"):
        assert f"'{name}'" not in result.out
    assert str(model_file) in result.out
    assert "3 problem(s) in 1 file(s)" in result.err
    document = invoke("verify", model_file, "--json").json()
    assert document["ok"] is False
    findings = document["results"][0]["findings"]
    assert sorted(f["tensor"] for f in findings) == ["layer1.weight", "layer3.weight", "layer4.weight"]
    assert all(f["file"] == str(model_file) and "fails its checksum" in f["problem"] for f in findings)


def test_every_single_bit_flip_in_tensor_data_is_caught(tmp_path):
    path = tmp_path / "small.safetensors"
    ms.save({"a": np.arange(4, dtype=np.int16), "b": np.ones(3, np.float32)}, path)
    pristine = path.read_bytes()
    begin, _ = tensor_span(path, "b")
    _, end = tensor_span(path, "a")
    for offset in range(begin, end):
        for bit in range(8):
            data = bytearray(pristine)
            data[offset] ^= 1 << bit
            path.write_bytes(bytes(data))
            result = invoke("verify", path, "--json")
            assert result.code == 1, (offset, bit)
            assert len(result.json()["results"][0]["findings"]) == 1


def test_damaged_header_names_the_file(model_file):
    flip_byte(model_file, 40)  # inside the JSON header
    result = invoke("verify", model_file)
    assert result.code == 1
    assert "CORRUPT" in result.out and str(model_file) in result.out


def test_truncated_file(model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[:-10])
    result = invoke("verify", model_file, "--json")
    assert result.code == 1
    assert result.json()["results"][0]["findings"][0]["file"] == str(model_file)


def test_plain_safetensors_has_no_checksums_to_verify(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": np.ones(3, np.float32)}, str(path))
    result = invoke("verify", path)
    assert result.code == 0 and "without checksums" in result.out


def test_run_names_every_corrupt_checkpoint_file_and_tensor(tmp_path):
    run = tmp_path / "run"
    make_run(run, [0.5, 0.4, 0.3, 0.2], bind_files=True)
    shard1 = run / "step001" / SHARD
    begin, end = tensor_span(shard1, "model.w")
    flip_byte(shard1, begin)
    begin, end = tensor_span(shard1, "model.b")
    flip_byte(shard1, end - 1)
    (run / "step002" / "files" / "notes.txt").write_text("tampered\n")
    os.remove(run / "step003" / SHARD)
    result = invoke("verify", run)
    assert result.code == 1
    out = result.out
    assert "ok       step000" in out
    assert "CORRUPT  step001" in out and "'model.w'" in out and "'model.b'" in out
    assert "CORRUPT  step002" in out and "notes.txt" in out
    assert "CORRUPT  step003" in out and "missing" in out
    assert "3 of 4 checkpoint(s) corrupt" in result.err
    document = invoke("verify", run, "--json").json()
    by_name = {r["name"]: r for r in document["results"]}
    assert by_name["step000"]["ok"] is True
    assert sorted(f["tensor"] for f in by_name["step001"]["findings"]) == ["model.b", "model.w"]
    assert by_name["step001"]["findings"][0]["file"] == str(shard1)
    assert by_name["step002"]["findings"][0]["file"] == str(run / "step002" / "files" / "notes.txt")
    assert by_name["step003"]["findings"][0]["file"] == str(run / "step003" / SHARD)


def test_checkpoint_with_unreadable_manifest_is_still_reported(tmp_path):
    run = tmp_path / "run"
    make_run(run, [0.5, 0.4])
    (run / "step000" / "manifest.json").write_text("{broken")
    result = invoke("verify", run, "--json")
    assert result.code == 1
    bad = [r for r in result.json()["results"] if not r["ok"]]
    assert [r["name"] for r in bad] == ["step000"]
    assert bad[0]["findings"][0]["file"].endswith(os.path.join("step000", "manifest.json"))


def test_manifest_and_shard_disagreeing_is_found(tmp_path):
    run = tmp_path / "run"
    make_run(run, [0.5])
    manifest_path = run / "step000" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tensors"]["model.w"]["xxh3"] = "0" * 16
    manifest_path.write_text(json.dumps(manifest))
    result = invoke("verify", f"{run}@0", "--json")
    assert result.code == 1
    assert [f["tensor"] for f in result.json()["results"][0]["findings"]] == ["model.w"]


def test_one_checkpoint_by_address(tmp_path):
    run = tmp_path / "run"
    make_run(run, [0.5, 0.1, 0.3])
    flip_byte(run / "step002" / SHARD, -1)
    assert invoke("verify", f"{run}@best").code == 0
    result = invoke("verify", f"{run}@latest")
    assert result.code == 1 and "step002" in result.out


def test_empty_run_and_missing_target(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("verify", tmp_path / "empty")
    assert result.code == 0 and "nothing to verify" in result.out
    assert invoke("verify", tmp_path / "absent").code == 1


def test_subprocess_exit_codes(model_file):
    assert run_process("verify", model_file).code == 0
    begin, _ = tensor_span(model_file, "layer2.weight")
    flip_byte(model_file, begin + 3)
    result = run_process("verify", model_file)
    assert result.code == 1
    assert "'layer2.weight'" in result.out and "error:" in result.err
    result = run_process("verify", model_file, "--json")
    assert result.code == 1
    assert json.loads(result.out)["ok"] is False
    assert json.loads(result.err)["error"] == "corrupt"
    assert run_process("verify", "--no-such-option").code == 2


class _OtherLayout:
    """A directory layout other than Checkpoints': manifest.json names one data file."""

    def __init__(self, path):
        import dataclasses

        from modelsafe.format.reader import FileSource

        self.path = str(path)
        self.manifest = json.loads(open(os.path.join(self.path, "manifest.json")).read())
        self._file = FileSource(os.path.join(self.path, self.manifest["data"]))
        self.records = {n: dataclasses.replace(r, file=self.manifest["data"]) for n, r in self._file.records.items()}
        self.aliases = {}

    def buffers(self, *, lazy=False):
        return {self.manifest["data"]: self._file.map_data()}

    def verify_record(self, record, base):
        self._file.verify_record(record, base)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_other_directory_layouts_are_verified_through_their_source(tmp_path, monkeypatch):
    from modelsafe import sources

    directory = tmp_path / "other"
    directory.mkdir()
    ms.save({"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, directory / "data.safetensors")
    (directory / "manifest.json").write_text(json.dumps({"layout": "other", "data": "data.safetensors"}))

    def is_other(path):
        return os.path.isfile(os.path.join(path, "manifest.json")) and "layout" in open(os.path.join(path, "manifest.json")).read()

    monkeypatch.setattr(sources, "_DIRECTORY_OPENERS", [(is_other, _OtherLayout), *sources._DIRECTORY_OPENERS])
    assert invoke("verify", directory).code == 0
    begin, _ = tensor_span(directory / "data.safetensors", "b")
    flip_byte(directory / "data.safetensors", begin)
    result = invoke("verify", directory, "--json")
    assert result.code == 1
    findings = result.json()["results"][0]["findings"]
    assert [(f["file"], f["tensor"]) for f in findings] == [(str(directory / "data.safetensors"), "b")]


def test_progress_total_is_the_bytes_that_get_hashed(tmp_path, model_file):
    from modelsafe.cli.verify import _total_bytes

    assert _total_bytes(str(model_file)) == 5 * 256
    run = tmp_path / "run"
    make_run(run, [0.5], bind_files=True)
    assert _total_bytes(str(run / "step000")) == 16 * 4 + 4 * 8 + len("bound file\n")


def test_progress_bar_is_drawn_when_stderr_is_a_terminal(model_file):
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "modelsafe", "verify", str(model_file)],
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0 and b"all checksums match" in out
    assert b"verifying" in drawn and "━".encode() in drawn  # the bar, on the terminal only
    assert b"verifying" not in out


def test_a_torch_pickle_is_named_for_what_it_is_not_called_corrupt(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, path)
    result = invoke("verify", path)
    assert result.code == 1
    text = (result.out + result.err).lower()
    assert "torch" in text and "modelsafe convert" in text
    assert "corrupt" not in text and "damaged" not in text
    document = invoke("verify", path, "--json").json()
    assert document["ok"] is False and "convert" in document["results"][0]["findings"][0]["problem"]


def test_a_shared_payload_is_reported_for_every_checkpoint_that_uses_it(tmp_path):
    run = tmp_path / "run"
    ck = ms.Checkpoints(run)
    state = {"frozen": np.arange(64, dtype=np.float32)}
    first, second = ck.save(state, step=0), ck.save(state, step=1)
    ck.close()
    shared = os.path.join(first.path, SHARD)
    os.remove(os.path.join(second.path, SHARD))
    os.link(shared, os.path.join(second.path, SHARD))   # one payload file, two checkpoints
    begin, _ = tensor_span(shared, "frozen")
    flip_byte(shared, begin)
    result = invoke("verify", run, "--json")
    assert result.code == 1
    by_name = {r["name"]: r for r in result.json()["results"]}
    for info in (first, second):
        assert [(f["file"], f["tensor"]) for f in by_name[info.name]["findings"]] == [(os.path.join(info.path, SHARD), "frozen")]


def test_verify_and_load_share_one_verifier():
    import inspect

    from modelsafe.cli import verify as verify_cli

    source = inspect.getsource(verify_cli)
    for reimplemented in ("FileSource", "load_manifest", "hash_file", "json.loads", "verify_record"):
        assert reimplemented not in source
