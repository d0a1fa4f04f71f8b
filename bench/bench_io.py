#!/usr/bin/env python
"""Time modelsafe against plain I/O, torch.save/torch.load and safetensors, side by side.

One run measures, on each workload, every contender against a plain-I/O baseline of
the same bytes measured in the same run, and checks the performance targets of
DESIGN.md.  See bench/README.md for what is measured and how.

    python bench/bench_io.py            # full run: 1 GiB, 20,000 x 1 KiB, model + Adam
    python bench/bench_io.py --quick    # small sizes, one repetition (smoke run)
    python bench/bench_io.py --json     # machine-readable results instead of the table

Workloads: (a) 1 GiB as 128 float32 tensors; (b) 20,000 float32 tensors of 1 KiB
(optimizer-like); (c) a transformer-like model's state_dict plus its Adam
optimizer.state_dict() after one training step.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

import modelsafe as ms

try:  # safetensors is a [dev] dependency; the bench reports it missing rather than failing
    import safetensors.torch as st
except ImportError:  # pragma: no cover - depends on the environment
    st = None

PAGE = 4096
PLAIN_WRITE_BUFFER = 4 << 20
GIB = 1 << 30


# --------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    key: str                        # "a", "b", "c"
    title: str
    obj: Any                        # what ms.save / torch.save get
    flat: dict[str, torch.Tensor]   # the same tensors as a flat dict (safetensors, plain I/O)
    probe: str                      # one tensor name for "open + read one tensor"
    nbytes: int = 0
    count: int = 0

    def __post_init__(self) -> None:
        self.nbytes = sum(t.numel() * t.element_size() for t in self.flat.values())
        self.count = len(self.flat)

    def release(self) -> None:
        """Drop the tensors once measured (the figures stay)."""
        self.obj = self.flat = None


def large_tensors(total: int, count: int = 128) -> Workload:
    n = total // count // 4
    gen = torch.Generator().manual_seed(0)
    flat = {f"layers.{i}.weight": torch.randn(n // 1024, 1024, generator=gen) for i in range(count)}
    return Workload("a", f"{_size(total)} as {count} float32 tensors", flat, flat, f"layers.{count // 2}.weight")


def small_tensors(count: int, size: int = 1024) -> Workload:
    gen = torch.Generator().manual_seed(1)
    flat = {}
    for i in range(count // 2):
        flat[f"state.{i}.exp_avg"] = torch.randn(size // 4, generator=gen)
        flat[f"state.{i}.exp_avg_sq"] = torch.rand(size // 4, generator=gen)
    return Workload("b", f"{count:,} float32 tensors of {_size(size)}", flat, flat, "state.0.exp_avg")


class _Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        self.norm2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int, width: int, depth: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def training_state(vocab: int, width: int, depth: int) -> Workload:
    torch.manual_seed(2)
    model = _TinyTransformer(vocab, width, depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, vocab, (2, 16))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model_state = {k: v.detach() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    obj = {"model": model_state, "optimizer": optim_state, "epoch": 1, "loss": float(loss.detach())}
    flat = {f"model.{k}": v for k, v in model_state.items()}
    for index, slots in optim_state["state"].items():
        for slot, value in slots.items():
            flat[f"optimizer.state.{index}.{slot}"] = value
    params = sum(p.numel() for p in model.parameters())
    title = f"transformer {depth}x{width}, vocab {vocab} ({params / 1e6:.1f}M params) + Adam state"
    return Workload("c", title, obj, flat, "model.embed.weight")


SIZES = {  # (a) bytes and tensor count, (b) tensor count, (c) vocab, width, depth
    "full": ((GIB, 128), 20_000, (16_000, 384, 6)),
    "quick": ((16 << 20, 128), 1_000, (2_000, 64, 2)),
    "tiny": ((2 << 20, 32), 200, (256, 32, 1)),
}


def build_workloads(size: str, which: str) -> list[Workload]:
    (a_bytes, a_count), b_count, model = SIZES[size]
    builders: dict[str, Callable[[], Workload]] = {
        "a": lambda: large_tensors(a_bytes, a_count),
        "b": lambda: small_tensors(b_count),
        "c": lambda: training_state(*model),
    }
    return [builders[k]() for k in which]


# --------------------------------------------------------------------------- touching loaded tensors
def touch_tensor(t: torch.Tensor) -> int:
    """Read one byte of every page a tensor spans (the same for every contender)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return 0
    ptr = t.data_ptr()
    if n >= 16 * PAGE:
        flat = t.reshape(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.reshape(-1)
        return int(flat[::PAGE].sum()) + int(flat[-1])
    total = 0
    for offset in range(0, n, PAGE):
        total += ctypes.c_ubyte.from_address(ptr + offset).value
    return total + ctypes.c_ubyte.from_address(ptr + n - 1).value


def touch(obj: Any) -> int:
    """Touch every tensor of a loaded tree (dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return touch_tensor(obj)
    if isinstance(obj, dict):
        return sum(touch(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(touch(v) for v in obj)
    return 0


def touch_buffer(buf: np.ndarray) -> int:
    return int(buf[::PAGE].sum()) + int(buf[-1]) if buf.size else 0


# --------------------------------------------------------------------------- contenders
def host_views(flat: dict[str, torch.Tensor]) -> list[memoryview]:
    return [memoryview(t.contiguous().numpy()).cast("B") for t in flat.values()]


def plain_write(path: str, views: list[memoryview]) -> None:
    with open(path, "wb", buffering=PLAIN_WRITE_BUFFER) as f:
        for view in views:
            f.write(view)
        f.flush()
        os.fsync(f.fileno())


def plain_read(path: str) -> np.ndarray:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.empty(size, dtype=np.uint8)
        view = memoryview(buf)
        done = 0
        while done < size:
            n = f.readinto(view[done:])
            if not n:
                raise EOFError(path)
            done += n
    touch_buffer(buf)
    return buf


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- timing
@dataclass
class Row:
    workload: str
    op: str
    seconds: float
    nbytes: int
    runs: list[float] = field(default_factory=list)
    baseline: str | None = None      # op name of the plain-I/O baseline it is compared to
    ratio: float | None = None       # baseline time / this time (1.0 = as fast as plain I/O)
    note: str = ""

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds else float("inf")


SYNC_BETWEEN_RUNS = True  # off in --quick: os.sync() also waits for other processes' writes


def settle() -> None:
    """Start each timed run from the same state: no garbage, no dirty pages of earlier runs."""
    gc.collect()
    if SYNC_BETWEEN_RUNS:
        os.sync()


@dataclass
class Contender:
    """One timed operation.  ``finish`` (optional) is timed separately after ``run``: a save's fsync."""

    name: str
    run: Callable[[], Any]
    before: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    finish_name: str = ""


def round_robin(contenders: list[Contender], repeat: int, warmup: int) -> dict[str, list[float]]:
    """Run every contender once per round, ``warmup`` untimed rounds first; machine noise hits all alike."""
    times: dict[str, list[float]] = {}
    for round_index in range(warmup + repeat):
        for c in contenders:
            if c.before is not None:
                c.before()
            settle()
            start = time.perf_counter()
            result = c.run()
            middle = time.perf_counter()
            if c.finish is not None:
                c.finish()
            end = time.perf_counter()
            del result  # freed outside the timed region, the same for every contender
            if round_index >= warmup:
                times.setdefault(c.name, []).append(middle - start)
                if c.finish is not None:
                    times.setdefault(c.finish_name, []).append(end - start)
    return times


def remove(path: str) -> Callable[[], None]:
    def _remove() -> None:
        if os.path.exists(path):
            os.unlink(path)
    return _remove


def loaded(load: Callable[[], Any]) -> Callable[[], Any]:
    """A load that is only done once every tensor it returned has been touched."""
    def run() -> Any:
        obj = load()
        touch(obj)
        return obj
    return run


def bench_workload(w: Workload, directory: str, repeat: int, warmup: int, open_repeat: int) -> list[Row]:
    gc.collect()
    gc.freeze()  # what exists now (modules, the workload) is never garbage: keeps settle()'s collections short
    rows: list[Row] = []
    size = w.nbytes
    paths = {name: os.path.join(directory, f"{w.key}.{name}") for name in ("plain", "ms", "torch", "st")}
    notes = {"torch.save": "no fsync", "safetensors.save_file": "no fsync"}

    def add(times: dict[str, list[float]], baseline: str) -> None:
        for op, runs in times.items():
            rows.append(Row(w.key, op, statistics.median(runs), size, runs, None if op == baseline else baseline, note=notes.get(op, "")))

    # ---- saves (every run writes a new file, as a save to a new path does)
    views = host_views(w.flat)
    savers = [
        Contender("plain write+fsync", lambda: plain_write(paths["plain"], views), remove(paths["plain"])),
        Contender("ms.save (durable)", lambda: ms.save(w.obj, paths["ms"]), remove(paths["ms"])),
        Contender("torch.save", lambda: torch.save(w.obj, paths["torch"]), remove(paths["torch"]),
                  lambda: fsync_path(paths["torch"]), "torch.save + fsync"),
    ]
    if st is not None:
        savers.append(Contender("safetensors.save_file", lambda: st.save_file(w.flat, paths["st"]), remove(paths["st"]),
                                lambda: fsync_path(paths["st"]), "safetensors.save_file + fsync"))
    add(round_robin(savers, repeat, warmup), "plain write+fsync")
    views.clear()  # the savers are done: release the host views (the list the lambda holds)

    # ---- loads: every tensor is touched before the clock stops
    loaders = [
        Contender("plain readinto", lambda: plain_read(paths["plain"])),
        Contender("ms.load (verify=True)", loaded(lambda: ms.load(paths["ms"]))),
        Contender("ms.load (verify=False)", loaded(lambda: ms.load(paths["ms"], verify=False))),
    ]
    if st is not None:
        loaders.append(Contender("safetensors.load_file (mmap)", loaded(lambda: st.load_file(paths["st"]))))
    loaders += [
        Contender("torch.load", loaded(lambda: torch.load(paths["torch"], weights_only=True))),
        Contender("torch.load (mmap=True)", loaded(lambda: torch.load(paths["torch"], mmap=True, weights_only=True))),
    ]
    add(round_robin(loaders, repeat, warmup), "plain readinto")

    # ---- open + read one tensor
    def open_one() -> Any:
        with ms.open(paths["ms"]) as reader:
            t = reader[w.probe]
            touch(t)
            return t

    probe_bytes = w.flat[w.probe].numel() * w.flat[w.probe].element_size()
    runs = round_robin([Contender("ms.open + read one tensor", open_one)], open_repeat, 1)["ms.open + read one tensor"]
    rows.append(Row(w.key, "ms.open + read one tensor", statistics.median(runs), probe_bytes, runs, note=f"{w.probe}, {_size(probe_bytes)}"))

    for name in paths.values():
        remove(name)()
    base = {r.op: r.seconds for r in rows}
    for r in rows:
        if r.baseline:
            r.ratio = base[r.baseline] / r.seconds
    return rows


# --------------------------------------------------------------------------- peak memory (fresh subprocess)
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field_name)


def _reset_peak() -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + (1 << 20)
    except (OSError, KeyError):
        return False


class _Sampler:
    """Fallback where VmHWM cannot be reset: poll the RSS from a thread."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._proc.memory_info().rss)


def peak_extra(save: Callable[[], None]) -> tuple[int, str]:
    gc.collect()
    if _reset_peak():
        before = _status_kib("VmRSS")
        save()
        return _status_kib("VmHWM") - before, "VmHWM"
    import psutil

    before = psutil.Process().memory_info().rss
    sampler = _Sampler()
    save()
    return sampler.stop() - before, "RSS sampling"


def memory_child(args: argparse.Namespace) -> None:
    """Print, as one JSON line per workload, the peak extra memory of each saver (run in a fresh process)."""
    directory = tempfile.mkdtemp(prefix="modelsafe-bench-mem-", dir=args.dir)
    try:
        for key in args.memory_child:
            (w,) = build_workloads(args.size, key)
            savers = {"ms.save": lambda p: ms.save(w.obj, p), "torch.save": lambda p: torch.save(w.obj, p)}
            if st is not None:
                savers["safetensors.save_file"] = lambda p: st.save_file(w.flat, p)
            out: dict[str, Any] = {"workload": key, "state": w.nbytes}
            for name, save in savers.items():
                path = os.path.join(directory, "m")
                save(path)  # warm up code paths and the allocator once
                os.unlink(path)
                extra, method = peak_extra(lambda: save(path))
                os.unlink(path)
                out[name] = extra
                out["method"] = method
            print(json.dumps(out), flush=True)
            w.release()
            del savers
            gc.collect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_memory(keys: str, args: argparse.Namespace) -> dict[str, dict]:
    """Peak extra memory during each save of workloads ``keys``, measured in one fresh subprocess."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", keys]
    cmd += {"tiny": ["--tiny"], "quick": ["--quick"], "full": []}[args.size]
    if args.dir:
        cmd += ["--dir", args.dir]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the memory subprocess failed:\n{done.stderr[-2000:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r.pop("workload"): r for r in results}


# --------------------------------------------------------------------------- targets
@dataclass
class Check:
    target: str
    measured: str
    ok: bool
    required: bool = True  # False: shown for context, not a target of DESIGN.md


def check_targets(rows: list[Row], memory: dict[str, dict]) -> list[Check]:
    t = {(r.workload, r.op): r for r in rows}
    checks: list[Check] = []

    def faster(w: str, op: str, other: str, factor: float = 1.0, label: str | None = None, required: bool = True) -> None:
        if (w, op) in t and (w, other) in t:
            speedup = t[(w, other)].seconds / t[(w, op)].seconds
            checks.append(Check(label or f"({w}) {op} faster than {other}" + (f" x{factor:g}" if factor != 1 else ""),
                                f"{speedup:.2f}x", speedup >= factor if factor != 1 else speedup > 1, required))

    def ratio(w: str, op: str, at_least: float, label: str) -> None:
        if (w, op) in t:
            r = t[(w, op)]
            checks.append(Check(label, f"{r.ratio:.2f}x", r.ratio >= at_least))

    ratio("a", "ms.save (durable)", 0.9, "(a) ms.save >= 0.9x plain write+fsync")
    for w in "ab":
        faster(w, "ms.save (durable)", "torch.save + fsync")
        faster(w, "ms.save (durable)", "safetensors.save_file + fsync")
        faster(w, "ms.save (durable)", "torch.save", label=f"({w}) ms.save vs torch.save without its fsync", required=False)
        faster(w, "ms.save (durable)", "safetensors.save_file", label=f"({w}) ms.save vs safetensors.save_file without its fsync",
               required=False)
    for w in "ac":
        ratio(w, "ms.load (verify=True)", 0.8, f"({w}) ms.load verify=True >= 0.8x plain readinto")
    if ("a", "safetensors.load_file (mmap)") in t:
        speed = t[("a", "safetensors.load_file (mmap)")].seconds / t[("a", "ms.load (verify=False)")].seconds
        checks.append(Check("(a) ms.load verify=False >= 0.9x safetensors mmap load", f"{speed:.2f}x", speed >= 0.9))
    faster("b", "ms.load (verify=False)", "safetensors.load_file (mmap)")
    faster("b", "ms.load (verify=True)", "torch.load", 3.0, "(b) ms.load verify=True >= 3x faster than torch.load")
    faster("b", "ms.load (verify=False)", "torch.load", 3.0, "(b) ms.load verify=False >= 3x faster than torch.load")
    if ("a", "ms.open + read one tensor") in t:
        s = t[("a", "ms.open + read one tensor")].seconds
        checks.append(Check("(a) ms.open + read one tensor < 10 ms", f"{s * 1e3:.2f} ms", s < 0.010))
    for w in "ac":
        if w in memory:
            share = memory[w]["ms.save"] / memory[w]["state"]
            checks.append(Check(f"({w}) extra memory during ms.save <= 10% of the state", f"{share:.1%}", share <= 0.10))
    return checks


# --------------------------------------------------------------------------- output
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} GiB"  # pragma: no cover


def _format_time(s: float) -> str:
    return f"{s * 1e3:9.1f} ms" if s < 10 else f"{s:9.2f} s "


def render(workloads: list[Workload], rows: list[Row], memory: dict[str, dict], checks: list[Check], meta: dict) -> str:
    out = [
        f"modelsafe I/O benchmark - {meta['cpus']} CPUs, load average {meta['load']}, "
        f"median of {meta['repeat']} runs after {meta['warmup']} warm-up "
        f"(open: {meta['open_repeat']}), contenders interleaved, page cache warm",
        "ratio = plain-I/O time / this time (1.00 = as fast as plain write+fsync or readinto of the same bytes)",
    ]
    for w in workloads:
        out.append("")
        out.append(f"({w.key}) {w.title}: {_size(w.nbytes)} of tensor data, {w.count:,} tensors")
        out.append(f"  {'operation':<32}{'median':>12}{'GB/s':>9}{'ratio':>8}  runs / note")
        for r in rows:
            if r.workload != w.key:
                continue
            ratio = f"{r.ratio:8.2f}" if r.ratio is not None else f"{'-':>8}"
            runs = " ".join(f"{x * 1e3:.0f}" if x >= 0.01 else f"{x * 1e3:.2f}" for x in r.runs[:11])
            note = f"  [{r.note}]" if r.note else ""
            out.append(f"  {r.op:<32}{_format_time(r.seconds):>12}{r.gbps:9.2f}{ratio}  ({runs} ms){note}")
        if w.key in memory:
            m = memory[w.key]
            parts = ", ".join(f"{k} {_size(max(v, 0))} ({v / m['state']:.1%})" for k, v in m.items() if k not in ("state", "method"))
            out.append(f"  peak extra memory during save ({m['method']}, fresh process): {parts}")
    out.append("")
    out.append("targets (DESIGN.md; 'info' lines are context, not targets)")
    if meta["quick"]:
        out.append("  (small sizes: fixed costs dominate, so these do not judge the targets, which are set for the full sizes)")
    for c in checks:
        status = ("PASS" if c.ok else "FAIL") if c.required else "info"
        out.append(f"  {status}  {c.target:<72} {c.measured}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one repetition (smoke run)")
    parser.add_argument("--tiny", action="store_true", help="--quick with even smaller sizes (the smoke test)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    parser.add_argument("--dir", default=None, help="directory for the temporary files (default: the system temp dir)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement; the median is reported (default 7, quick 1)")
    parser.add_argument("--workloads", default="abc", help="which workloads to run, e.g. 'ab' (default: abc)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.quick = args.quick or args.tiny
    args.size = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.memory_child:
        memory_child(args)
        return 0
    global SYNC_BETWEEN_RUNS
    SYNC_BETWEEN_RUNS = not args.quick
    repeat = args.repeat or (1 if args.quick else 7)
    open_repeat = 3 if args.quick else 21
    warmup = 0 if args.quick else 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    directory = tempfile.mkdtemp(prefix="modelsafe-bench-", dir=args.dir)
    rows: list[Row] = []
    memory: dict[str, dict] = {}
    workloads: list[Workload] = []
    try:
        for key in args.workloads:
            (w,) = build_workloads(args.size, key)
            workloads.append(w)
            rows += bench_workload(w, directory, repeat, warmup, open_repeat)
            w.release()
            if not args.no_memory and not args.quick:  # a fresh process per full-size workload
                memory.update(measure_memory(key, args))
        if not args.no_memory and args.quick:  # one process for all the small ones
            memory.update(measure_memory(args.workloads, args))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    checks = check_targets(rows, memory)
    meta = {"cpus": os.cpu_count(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "repeat": repeat,
            "open_repeat": open_repeat, "warmup": warmup, "quick": args.quick, "torch": torch.__version__,
            "safetensors": getattr(sys.modules.get("safetensors"), "__version__", None), "modelsafe": ms.__version__}
    if args.json:
        print(json.dumps({
            "meta": meta,
            "workloads": {w.key: {"title": w.title, "bytes": w.nbytes, "tensors": w.count} for w in workloads},
            "rows": [{**{k: v for k, v in r.__dict__.items()}, "gbps": r.gbps} for r in rows],
            "memory": memory,
            "targets": [c.__dict__ for c in checks],
        }, indent=2))
    else:
        print(render(workloads, rows, memory, checks, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
