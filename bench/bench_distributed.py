#!/usr/bin/env python
"""Sharded save/load time of ``ms.distributed`` against plain DCP (FileSystemWriter/Reader), same state, same ranks.

The state: an FSDP2 model (``fully_shard`` per layer) of ``depth`` Linear(width, width)
layers and its Adam state after one step, as ``get_state_dict`` gives it, on gloo/CPU.
Each round, on every rank, in the same order: ``ms.distributed.save`` (rank files
with checksums, JSON manifest, durable atomic commit) and ``dcp.save`` with
``FileSystemWriter`` (its defaults: one file per rank, files fsynced, pickled
metadata), then ``ms.distributed.load_into`` (every chunk verified) and ``dcp.load``
with ``FileSystemReader``.  Times are from a barrier to a barrier (the slowest rank);
the table gives the median of the rounds and the ratio to DCP (below 1: faster).

A second table: how long ``ms.Checkpoints(...).save(state, distributed=True)`` blocks
the training loop, synchronous against ``async_save=True`` (returns once the state is
copied to CPU; the write, commit and retention go on in the background, waited for
outside the timing), beside an in-memory copy of the state's local tensors (DESIGN.md's
yardstick for async saves).  Each time is the slowest rank's, median of the rounds.

    python bench/bench_distributed.py                 # 2 ranks, 128 MiB of parameters (+ 2x Adam)
    python bench/bench_distributed.py --mib 512 --repeat 5
    python bench/bench_distributed.py --tiny --json   # smoke run
    python bench/bench_distributed.py --s3            # also ms.distributed.save to S3 (moto on loopback)

With ``--s3`` a moto server is started on 127.0.0.1 and the ranks also save to it
(``ms.distributed.save(state, "s3://...")``: rank files through local temporary files,
uploaded multipart; a new checkpoint name each round).  A loopback server measures the
upload path's overhead, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mib", type=float, default=128, help="parameter bytes (Adam adds twice as much)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a few KiB, one round: the smoke test's size")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: the system temp directory)")
    parser.add_argument("--s3", action="store_true", help="also save to S3 on a loopback moto server")
    parser.add_argument("--s3-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.mib, args.repeat = 0.05, 1
    if args.worker:
        worker(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks),
               "--master-port", str(port), os.path.abspath(__file__), "--worker", "--mib", str(args.mib),
               "--repeat", str(args.repeat)] + (["--json"] if args.json else []) + (["--dir", args.dir] if args.dir else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = None
    if args.s3:
        server, url, s3_env = _s3_server()
        command += ["--s3-url", url]
        env.update(s3_env)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(done.returncode)


def _s3_server():
    """(moto server process, s3://fresh-bucket, the AWS_* environment pointing at it)."""
    import uuid

    import boto3

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_s3 import start_server

    server, endpoint = start_server()
    bucket = f"bench-dist-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1"}
    return server, f"s3://{bucket}", env


def build_state(mib: float):
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import init_device_mesh

    width = 1024 if mib >= 16 else 64
    depth = max(2, round(mib * MIB / (4 * width * width)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, width)).sum().backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    nbytes = sum(t.to_local().numel() * t.element_size() for t in _tensors(state))
    return state, nbytes, f"{depth} x Linear({width}, {width}) + Adam"


def _tensors(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _tensors(v)
    elif isinstance(node, list):
        for v in node:
            yield from _tensors(v)
    elif hasattr(node, "to_local"):
        yield node


def worker(args) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import modelsafe as ms

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    root = None
    try:
        state, local_bytes, what = build_state(args.mib)
        sizes = [None] * dist.get_world_size()
        dist.all_gather_object(sizes, local_bytes)
        total = sum(sizes)
        holder = [tempfile.mkdtemp(prefix="bench-dist-", dir=args.dir) if rank == 0 else None]
        dist.broadcast_object_list(holder)
        root = holder[0]
        rounds = iter(range(10**6))
        ops = {
            "ms.distributed.save": lambda p: ms.distributed.save(state, p),
            **({"ms.distributed.save (s3)": lambda p: ms.distributed.save(state, f"{args.s3_url}/ms-{next(rounds)}")}
               if args.s3_url else {}),
            "dcp.save (FileSystemWriter)": lambda p: dcp.save(state, storage_writer=dcp.FileSystemWriter(p)),
            "ms.distributed.load_into": lambda p: ms.distributed.load_into(state, p),
            "dcp.load (FileSystemReader)": lambda p: dcp.load(state, storage_reader=dcp.FileSystemReader(p)),
        }
        paths = {"ms": os.path.join(root, "ms"), "dcp": os.path.join(root, "dcp")}
        times: dict[str, list[float]] = {op: [] for op in ops}
        for _ in range(args.repeat):
            for op, fn in ops.items():
                path = paths["ms" if op.startswith("ms") else "dcp"]
                if "save" in op and "(s3)" not in op and rank == 0:
                    shutil.rmtree(path, ignore_errors=True)  # each save writes a new checkpoint
                dist.barrier()
                start = time.perf_counter()
                fn(path)
                dist.barrier()
                times[op].append(time.perf_counter() - start)
        blocked = checkpoint_blocking(args, state, root)
        if rank == 0:
            report(args, times, total, what, dist.get_world_size(), blocked)
    finally:
        dist.barrier()
        if rank == 0 and root is not None:
            shutil.rmtree(root, ignore_errors=True)
        dist.destroy_process_group()


def checkpoint_blocking(args, state, root: str) -> dict[str, list[float]]:
    """Per round, the slowest rank's time in: a copy of the local tensors, a sync and an async sharded run save."""
    import torch.distributed as dist

    import modelsafe as ms

    runs = {"sync": ms.Checkpoints(os.path.join(root, "run-sync"), keep_last=1),
            "async": ms.Checkpoints(os.path.join(root, "run-async"), keep_last=1, async_save=True)}
    runs["async"].save(state, distributed=True)  # warm-up: the first one also makes the background gloo group
    runs["async"].wait()
    ops = {
        "in-memory copy of the state": lambda: [t.to_local().clone() for t in _tensors(state)],
        "Checkpoints.save, sync": lambda: runs["sync"].save(state, distributed=True),
        "Checkpoints.save, async (blocked)": lambda: runs["async"].save(state, distributed=True),
    }
    times: dict[str, list[float]] = {op: [] for op in ops}
    for _ in range(args.repeat):
        for op, fn in ops.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            mine = time.perf_counter() - start
            runs["async"].wait()  # the background write is not training's time; the next op starts after it
            slowest = [None] * dist.get_world_size()
            dist.all_gather_object(slowest, mine)
            times[op].append(max(slowest))
    for run in runs.values():
        run.close()
    return times


def report(args, times: dict, total: int, what: str, ranks: int, blocked: dict) -> None:
    medians = {op: statistics.median(ts) for op, ts in times.items()}
    rows = []
    for op, median in medians.items():
        base = medians["dcp.save (FileSystemWriter)" if "save" in op else "dcp.load (FileSystemReader)"]
        rows.append({"op": op, "median_s": median, "MiB_per_s": total / MIB / median if median else None,
                     "ratio_to_dcp": median / base if base else None, "runs_s": times[op]})
    medians = {op: statistics.median(ts) for op, ts in blocked.items()}
    sync, copy = medians["Checkpoints.save, sync"], medians["in-memory copy of the state"]
    blocking = [{"op": op, "median_s": m, "ratio_to_sync": m / sync if sync else None,
                 "ratio_to_copy": m / copy if copy else None, "runs_s": blocked[op]} for op, m in medians.items()]
    if args.json:
        print(json.dumps({"ranks": ranks, "state_bytes": total, "state": what, "rows": rows, "blocking": blocking},
                         indent=1))
        return
    print(f"{ranks} ranks (gloo, CPU), state: {what}, {total / MIB:.1f} MiB in all; median of {args.repeat} round(s)")
    print(f"{'operation':32} {'median':>9} {'MiB/s':>9} {'x DCP':>7}")
    for row in rows:
        print(f"{row['op']:32} {row['median_s']:8.3f}s {row['MiB_per_s']:9.1f} {row['ratio_to_dcp']:7.2f}")
    print("\ntime the training loop is blocked by a sharded Checkpoints save (slowest rank)")
    print(f"{'operation':36} {'median':>9} {'x sync':>7} {'x copy':>7}")
    for row in blocking:
        print(f"{row['op']:36} {row['median_s']:8.3f}s {row['ratio_to_sync']:7.2f} {row['ratio_to_copy']:7.2f}")


if __name__ == "__main__":
    main()
