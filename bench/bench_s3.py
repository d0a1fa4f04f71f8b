"""Save and load throughput to S3 (a moto server on loopback) vs. s3fs moving the same bytes.

A state of ``--size`` MiB (float32 tensors of at most 16 MiB) goes to a bucket of a
moto server this script starts on 127.0.0.1, by:

* **s3fs upload** (the baseline): the state's bytes, already serialized in memory as one
  blob, written with ``fs.pipe_file`` (s3fs's own multipart upload);
* **ms.save**: one safetensors file streamed in 8 MiB parts (hash, header, payloads);
* **Checkpoints.save**: a checkpoint (shards written to a local staging directory, uploaded,
  manifest last, retention listing);
* **Checkpoints.save replace**: the same step saved again under its name (a crash-safe
  replace: the new checkpoint uploaded under a staging prefix, then copied into place
  server-side); also reported against Checkpoints.save (``vs_new_name``);
* **Checkpoints.save unchanged**: the same state saved as the next step with deduplication
  on (the default): its shards equal the previous checkpoint's and are copied server-side.

The first three checkpoint rows pass ``dedup=False``, so every save uploads its bytes.

and read back by:

* **s3fs download** (the baseline): ``fs.cat_file`` of the whole object;
* **ms.load**: the file read in 16 MiB ranges, every checksum verified;
* **Checkpoints.load**: the checkpoint downloaded, opened, verified;
* **ms.open + one tensor** (baseline: **s3fs range read** of that tensor's bytes): open
  (the size and two small ranges for the header) and read one tensor (one range request);
* a **checkpoint directory** (``checkpoint_open`` in the JSON): ``ms.open(dir)[one]`` by byte
  ranges vs. downloading the directory and opening the copy (what ``ms.open`` did before),
  with the bytes each fetched from the store.

The median of ``--repeat`` runs is reported with its ratio to the baseline (speed: > 1 is
faster).  A loopback server measures modelsafe's overhead over s3fs, not a network.

    python bench/bench_s3.py                 # 256 MiB, 5 runs
    python bench/bench_s3.py --tiny --json   # the smoke test's sizes
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Callable

import numpy as np

import modelsafe as ms

MIB = 1 << 20


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("the moto server did not start")
            time.sleep(0.1)


def make_state(mib: float) -> dict:
    total = max(1, int(mib * MIB) // 4)
    per = min(total, 4 * MIB)  # 16 MiB tensors
    rng = np.random.default_rng(0)
    return {f"t{i}": rng.standard_normal(min(per, total - i * per), dtype=np.float32)
            for i in range((total + per - 1) // per)}


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up: connections, caches
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def run(mib: float, repeat: int) -> dict:
    import boto3
    import s3fs

    server, endpoint = start_server()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        options = {"key": "x", "secret": "x", "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}
        fs = s3fs.S3FileSystem(**options)
        state = make_state(mib)
        blob = b"".join(t.tobytes() for t in state.values())
        file_url, run_url = f"s3://{bucket}/m.safetensors", f"s3://{bucket}/run"
        # dedup=False: every save uploads its bytes (the state does not change between saves)
        ck = ms.Checkpoints(run_url, keep_last=1, storage_options=options, dedup=False)
        again = ms.Checkpoints(f"s3://{bucket}/replaced", storage_options=options, dedup=False)
        unchanged = ms.Checkpoints(f"s3://{bucket}/dedup", keep_last=1, storage_options=options)
        steps = iter(range(10**6))
        one = next(iter(state))

        def open_one() -> None:
            with ms.open(file_url, storage_options=options) as reader:
                reader[one]

        ms.save(state, file_url, storage_options=options)
        with ms.open(file_url, storage_options=options) as reader:  # where tensor `one` lies in the file
            record = reader.record(one)
            start = reader._source.data_start + record.begin
        span = (start, start + state[one].nbytes)

        rows = [
            ("s3fs upload", "save", timed(lambda: fs.pipe_file(f"{bucket}/raw.bin", blob), repeat)),
            ("ms.save", "save", timed(lambda: ms.save(state, file_url, storage_options=options), repeat)),
            ("Checkpoints.save", "save", timed(lambda: ck.save(state, step=next(steps)), repeat)),
            ("Checkpoints.save replace", "save", timed(lambda: again.save(state, step=0), repeat)),
            ("Checkpoints.save unchanged", "save", timed(lambda: unchanged.save(state, step=next(steps)), repeat)),
            ("s3fs download", "load", timed(lambda: fs.cat_file(f"{bucket}/raw.bin"), repeat)),
            ("ms.load", "load", timed(lambda: ms.load(file_url, storage_options=options), repeat)),
            ("Checkpoints.load", "load", timed(lambda: ck.load(), repeat)),
            ("s3fs range read", "open", timed(lambda: fs.cat_file(f"{bucket}/m.safetensors", start=span[0], end=span[1]), repeat)),
            ("ms.open + one tensor", "open", timed(open_one, repeat)),
        ]
        ck.close()
        again.close()
        unchanged.close()
        opened = checkpoint_open(bucket, options, mib, repeat)
    finally:
        server.terminate()
        server.wait()
    baseline = {"save": "s3fs upload", "load": "s3fs download", "open": "s3fs range read"}
    medians = {name: statistics.median(runs) for name, _, runs in rows}
    out = []
    for name, kind, runs in rows:
        row = {"op": name, "kind": kind, "median_s": medians[name], "runs": runs,
               "MiB_per_s": len(blob) / MIB / medians[name] if kind != "open" else None}
        if name != baseline[kind]:
            row["speed_vs_s3fs"] = medians[baseline[kind]] / medians[name]
        out.append(row)
    out[[r["op"] for r in out].index("Checkpoints.save replace")]["vs_new_name"] = (
        medians["Checkpoints.save"] / medians["Checkpoints.save replace"])
    return {"MiB": len(blob) / MIB, "tensors": len(state), "repeat": repeat, "rows": out, "checkpoint_open": opened}


OPEN_TENSORS = 8


def checkpoint_open(bucket: str, options: dict, mib: float, repeat: int) -> list[dict]:
    """ms.open of one tensor of a checkpoint directory (``mib`` MiB in 8 tensors) by ranges vs.
    downloading the directory first."""
    import shutil
    import tempfile

    from modelsafe.storage.remote import filesystem

    rng = np.random.default_rng(1)
    state = {f"c{i}": rng.standard_normal(max(1, int(mib * MIB) // 4 // OPEN_TENSORS), dtype=np.float32)
             for i in range(OPEN_TENSORS)}
    run_url = f"s3://{bucket}/open-run"
    with ms.Checkpoints(run_url, storage_options=options) as ck:
        url = ck.save(state, step=0).path
    one = next(iter(state))
    fs, key = filesystem(url, options)  # the instance modelsafe reads through (fsspec caches it)
    fetched: list[int] = []
    real = fs.cat_file

    def counting(path, start=None, end=None, **kwargs):  # bytes of every whole or range read
        data = real(path, start=start, end=end, **kwargs)
        fetched.append(len(data))
        return data

    def by_ranges() -> None:
        with ms.open(url, storage_options=options) as reader:
            reader[one]

    def downloaded() -> None:
        local = tempfile.mkdtemp(prefix="bench-s3-open-")
        try:
            for item in fs.find(key):
                fetched.append(fs.size(item))
                fs.get_file(item, f"{local}/{item.rpartition('/')[2]}")
            with ms.open(local) as reader:
                reader[one]
        finally:
            shutil.rmtree(local, ignore_errors=True)

    rows = []
    fs.cat_file = counting
    try:
        for name, fn in (("download dir + ms.open one tensor", downloaded), ("ms.open dir + one tensor (ranges)", by_ranges)):
            runs = timed(fn, repeat)
            fetched.clear()
            fn()
            rows.append({"op": name, "median_s": statistics.median(runs), "runs": runs, "bytes_fetched": sum(fetched)})
    finally:
        fs.cat_file = real
    rows[1]["speed_vs_download"] = rows[0]["median_s"] / rows[1]["median_s"]
    rows[1]["bytes_vs_download"] = rows[1]["bytes_fetched"] / rows[0]["bytes_fetched"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=256, help="MiB of float32 tensors (default 256)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="2 MiB, 2 runs (the smoke test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size, repeat = (2, 2) if args.tiny else (args.size, args.repeat)
    result = run(size, repeat)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['MiB']:.0f} MiB in {result['tensors']} tensors, median of {repeat} runs (moto on loopback)")
    for row in result["rows"]:
        speed = f"{row['MiB_per_s']:8.1f} MiB/s" if row["MiB_per_s"] else " " * 14
        ratio = f"{row['speed_vs_s3fs']:.2f}x s3fs" if "speed_vs_s3fs" in row else ""
        ratio += f", {row['vs_new_name']:.2f}x a new name" if "vs_new_name" in row else ""
        print(f"{row['op']:24s} {row['median_s'] * 1000:9.1f} ms {speed}  {ratio}")
    print(f"checkpoint directory of {result['MiB']:.0f} MiB in {OPEN_TENSORS} tensors, reading one:")
    for row in result["checkpoint_open"]:
        ratio = f"{row['speed_vs_download']:.2f}x the speed, {row['bytes_vs_download']:.3f} of the bytes" \
            if "speed_vs_download" in row else ""
        print(f"  {row['op']:36s} {row['median_s'] * 1000:9.1f} ms {row['bytes_fetched'] / MIB:9.2f} MiB  {ratio}")


if __name__ == "__main__":
    main()
