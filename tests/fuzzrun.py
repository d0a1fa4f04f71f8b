"""Run fuzz cases (tests/fuzzcraft.py) through modelsafe's entry points in capped child processes.

The parent (:func:`run_cases`) sends batches of case numbers to a fresh interpreter
(``python fuzzrun.py``).  The child builds each case, calls every entry point that
applies (``ms.load`` as saved and as numpy, ``ms.open`` reading every key and the
metadata, ``ms.load_into`` into a matching small module, ``ms.load`` with
``trusted=``, ``modelsafe verify`` / ``show`` / ``ls`` in-process, and for runs
``ms.Checkpoints(run).list()/latest()/best()/load()``), and appends one JSON line per
case to a results file.  Outcomes, worst first:

* ``canary``  a trace file appeared, or a module the file named got imported;
* ``hang``    one entry point ran past the hang limit (a timer in the child), or the child
  finished no case for a long while (the parent kills it; the case it was on is the hang);
* ``crash``   the child died on the case;
* ``memory``  a MemoryError (or torch's "can't allocate memory"), raised or wrapped: the
  child's address space is capped
  (RLIMIT_AS) at what it holds after start-up plus ``headroom``;
* ``foreign`` an exception that is not a ModelsafeError (from the CLI: any exception
  the command group did not map to an exit code);
* ``error``   ModelsafeError subclasses: a clean refusal;
* ``ok``.

Each entry point's wall time and peak extra RSS (VmHWM reset before each call) are
recorded; :func:`summarize` reports them against the issue's budget (2 s and 256 MB
beyond the case's own file size), and groups failures by exception type and the
modelsafe line that raised it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from typing import Any, Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
HEADROOM = 384 << 20            # address space a child may add beyond its start-up size (budget + slack)
BUDGET_SECONDS = 2.0            # per entry point (the "no case above 2 s")
BUDGET_EXTRA_BYTES = 256 << 20  # peak RSS beyond the case's file size
FAILURES = ("canary", "hang", "crash", "memory", "foreign", "harness")
RANK = {name: i for i, name in enumerate(FAILURES + ("honest-refused", "error", "ok"))}


# -- parent side ----------------------------------------------------------------------------------

def write_support(directory: str, trace_dir: str) -> None:
    """The canary modules, importable by the child (see fuzzcraft.canary_sources)."""
    from fuzzcraft import canary_sources

    os.makedirs(directory, exist_ok=True)
    os.makedirs(trace_dir, exist_ok=True)
    for name, text in canary_sources(trace_dir).items():
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(text)


def prepare(work: str) -> dict:
    """Base files, canary modules and folders under ``work``; returns what each child needs."""
    from fuzzcraft import make_bases

    bases = make_bases(os.path.join(work, "bases"))
    support, trace = os.path.join(work, "support"), os.path.join(work, "trace")
    write_support(support, trace)
    return {"bases": asdict(bases), "support": support, "trace": trace, "work": work}


def run_cases(setup: dict, kind: str, seed: int, indices: Iterable[int], *, batch_size: int = 200,
              hang_s: float = 20.0, case_timeout: float | None = None, headroom: int = HEADROOM,
              progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One outcome per case, in order (after one "honest" case if an honest base fails an entry point).

    Each batch runs in its own capped child.  Besides the child's own timer per entry point
    (``hang_s``), the parent kills a child that finishes no case for ``case_timeout`` seconds
    (default: every entry point of a case at its hang limit, plus start-up): a hang detector for
    calls a timer cannot interrupt, generous on a busy machine, not a speed budget.
    """
    case_timeout = case_timeout or 12 * hang_s + 180
    pending = list(indices)
    total, outcomes = len(pending), []
    while pending:
        batch = pending[:batch_size]
        warmup, got, problem = _run_batch(setup, kind, seed, batch, hang_s=hang_s, case_timeout=case_timeout,
                                          headroom=headroom)
        if warmup["honest_findings"] and not any(o["kind"] == "honest" for o in outcomes):
            outcomes.append(_honest_case(warmup["honest_findings"]))
        outcomes += got
        if len(got) < len(batch):  # the child stopped on batch[len(got)]: that case is the culprit
            index = batch[len(got)]
            outcomes.append({"kind": kind, "seed": seed, "index": index, "family": "?", "note": "",
                             "outcome": problem["outcome"], "ops": [], "detail": problem["detail"]})
            got.append(None)
        pending = batch[len(got):] + pending[len(batch):]
        if progress:
            progress(total - len(pending), total)
    return outcomes


def _honest_case(findings: list[dict]) -> dict:
    """The entry points that fail on honest base files, as one case of their own."""
    worst = min((f["outcome"] for f in findings), key=lambda o: RANK[o])
    return {"kind": "honest", "seed": 0, "index": 0, "family": "honest", "note": "honest base files",
            "outcome": worst if worst in FAILURES else "honest-refused", "ops": findings}


def _run_batch(setup: dict, kind: str, seed: int, batch: list[int], *, hang_s: float, case_timeout: float,
               headroom: int) -> tuple[dict, list[dict], dict]:
    fd, results = tempfile.mkstemp(prefix="fuzz-", suffix=".jsonl", dir=setup["work"])
    os.close(fd)
    job = dict(setup, kind=kind, seed=seed, indices=batch, hang_s=hang_s, headroom=headroom, results=results)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2",
               PYTHONPATH=os.pathsep.join([HERE, setup["support"], os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
        stdin.write(json.dumps(job).encode())
        stdin.seek(0)
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fuzzrun.py")], stdin=stdin,
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        stalled = _watch(proc, results, case_timeout)
        stderr.seek(0)
        tail = stderr.read()[-2000:].decode(errors="replace")
    if stalled:
        problem = {"outcome": "hang", "detail": f"no case finished for {case_timeout:.0f} s (killed): {tail}"}
    else:
        problem = {"outcome": "crash", "detail": f"child exited with {proc.returncode}: {tail}"}
    with open(results) as f:
        lines = [json.loads(line) for line in f if line.endswith("\n")]
    os.unlink(results)
    if not lines or lines[0].get("warmup") != "ok":
        raise RuntimeError(f"the fuzz child failed before its first case: {lines[:1]} {problem['detail']}")
    return lines[0], lines[1:], problem


def _watch(proc: subprocess.Popen, results: str, case_timeout: float) -> bool:
    """Wait for the child; kill it when its results file stops growing for ``case_timeout`` seconds
    (start-up and warm-up get that long too).  True when it was killed: the case it was on hangs."""
    size, last = -1, time.monotonic()
    while True:
        try:
            proc.wait(timeout=1)
            return False
        except subprocess.TimeoutExpired:
            pass
        now_size = os.path.getsize(results)
        if now_size != size:
            size, last = now_size, time.monotonic()
        elif time.monotonic() - last > case_timeout:
            proc.kill()
            proc.wait()
            return True


# -- summary --------------------------------------------------------------------------------------

def failure_key(op: dict) -> tuple:
    """What makes two failures the same: outcome, exception type, where raised (a canary: its traces)."""
    where = ",".join(sorted(op["canaries"])) if op.get("canaries") else op.get("location", "")
    return (op["outcome"], op.get("type", ""), where)


def summarize(outcomes: list[dict]) -> dict:
    """Counts per outcome, distinct failures (type + where raised), slowest and largest entry points."""
    counts: dict[str, int] = {}
    distinct: dict[tuple, dict] = {}
    slowest = {"seconds": 0.0}
    largest = {"peak_extra": 0}
    over_budget = []
    peak_rss = 0
    for case in outcomes:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
        peak_rss = max(peak_rss, case.get("peak_rss", 0))
        failing_ops = [op for op in case["ops"] if op["outcome"] in FAILURES]
        if case["outcome"] in FAILURES and not failing_ops:  # a crash/hang of the whole child, or harness trouble
            failing_ops = [{"op": "?", "outcome": case["outcome"], "type": case["outcome"],
                            "location": "", "message": case.get("detail", "")[-300:]}]
        for op in failing_ops:
            key = failure_key(op)
            entry = distinct.setdefault(key, {
                "outcome": op["outcome"], "type": op.get("type", ""), "location": key[2],
                "raised_at": op.get("raised_at", ""), "count": 0, "cases": set(), "ops": set(), "families": set(),
                "example": _example(case, op)})
            entry["count"] += 1
            entry["cases"].add((case["kind"], case["index"]))
            entry["ops"].add(op["op"])
            entry["families"].add(case["family"])
        for op in case["ops"]:
            if op.get("seconds", 0) > slowest["seconds"]:
                slowest = dict(_example(case, op), seconds=op["seconds"])
            if op.get("peak_extra", 0) > largest["peak_extra"]:
                largest = dict(_example(case, op), peak_extra=op["peak_extra"])
            if op.get("seconds", 0) > BUDGET_SECONDS or op.get("peak_extra", 0) > BUDGET_EXTRA_BYTES + case.get("size", 0):
                over_budget.append(dict(_example(case, op), seconds=op.get("seconds"), peak_extra=op.get("peak_extra")))
    table = sorted(distinct.values(), key=lambda e: (RANK[e["outcome"]], -e["count"]))
    for entry in table:
        entry["ops"], entry["families"], entry["cases"] = sorted(entry["ops"]), sorted(entry["families"]), len(entry["cases"])
    return {"cases": len(outcomes), "outcomes": dict(sorted(counts.items(), key=lambda kv: RANK[kv[0]])),
            "failures": sum(counts.get(k, 0) for k in FAILURES), "distinct_failures": table,
            "slowest": slowest, "largest": largest, "over_budget": over_budget, "peak_rss": peak_rss}


def assert_clean(outcomes: list[dict], *, budget: bool, min_ok: int | None = None) -> None:
    """The tests' verdict: no failure of any class, entry points both load and refuse (not
    vacuous), and with ``budget`` no call over the time/memory budget (soak runs only)."""
    summary = summarize(outcomes)
    assert summary["failures"] == 0, describe_failures(summary)
    ops = [op["outcome"] for case in outcomes for op in case["ops"]]
    min_ok = len(outcomes) if min_ok is None else min_ok
    assert ops.count("ok") >= min_ok and ops.count("error") > len(outcomes) // 4, summary["outcomes"]
    if budget:
        assert not summary["over_budget"], summary["over_budget"][:10]


def _example(case: dict, op: dict) -> dict:
    return {"case": f"{case['kind']}:{case['seed']}:{case['index']}", "family": case.get("family"),
            "note": case.get("note", "")[:200], "op": op.get("op"), "message": op.get("message", "")[:300]}


def describe_failures(summary: dict, limit: int = 25) -> str:
    """The distinct failures as text, each with a case to rerun alone (scripts/fuzz.py --case)."""
    lines = [f"{summary['failures']} failing cases of {summary['cases']}; outcomes {summary['outcomes']}"]
    for e in summary["distinct_failures"][:limit]:
        ex = e["example"]
        lines.append(f"- {e['outcome']} {e['type']} at {e['location'] or e['raised_at']} in {e['cases']} cases "
                     f"ops={','.join(e['ops'])} families={','.join(e['families'])}\n"
                     f"    e.g. scripts/fuzz.py --case {ex['case']} ({ex['family']}: {ex['note']}; {ex['op']}): "
                     f"{ex['message'][:200]}")
    return "\n".join(lines)


# -- child side -----------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the timer in an entry point that ran past the hang limit (not an Exception: nothing catches it)."""


def _status(field_: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_ + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _where(tb: Any) -> tuple[str, str]:
    """(deepest modelsafe frame, deepest frame) as ``file:line (function)``."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if f"{os.sep}modelsafe{os.sep}" in f.filename]
    fmt = lambda f: f"{_short(f.filename)}:{f.lineno} ({f.name})"  # noqa: E731
    return (fmt(ours[-1]) if ours else "", fmt(frames[-1]) if frames else "")


def _short(filename: str) -> str:
    parts = filename.split(os.sep)
    for anchor in ("modelsafe", "site-packages"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i:])
    return "/".join(parts[-2:])


_ALLOCATION_FAILED = "can't allocate memory"  # torch's allocator, refused by the cap, raises a RuntimeError


def classify(exc: BaseException, tb: Any = None) -> dict:
    """The outcome record of an exception an entry point raised."""
    import modelsafe as ms

    chain = _chain(exc)
    if any(isinstance(e, MemoryError) or _ALLOCATION_FAILED in str(e) for e in chain):
        outcome = "memory"
    elif isinstance(exc, ms.ModelsafeError):
        outcome = "error"
    else:
        outcome = "foreign"
    location, raised_at = _where(tb or exc.__traceback__)
    record = {"outcome": outcome, "type": type(exc).__name__, "location": location, "raised_at": raised_at,
              "message": str(exc)[:500]}
    if outcome in FAILURES:
        record["traceback"] = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))[-4000:]
    return record


def _read_all(ms: Any, path: str) -> None:
    with ms.open(path) as reader:
        for key in reader.keys():
            reader[key]
        reader.metadata


class CliFailure(dict):
    """The outcome record of a command that did not end with an exit code (returned, not raised)."""


def _cli(args: list[str]) -> CliFailure | None:
    """``modelsafe ARGS`` in-process: None when it exited with a code, else the failure record."""
    from click.testing import CliRunner

    from modelsafe.cli import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is None or isinstance(result.exception, SystemExit):
        if result.exit_code not in (0, 1, 2):
            return CliFailure(outcome="foreign", type=f"exit {result.exit_code}", location="", raised_at="",
                              message=result.output[-300:])
        return None
    return CliFailure(classify(result.exception, result.exc_info[2] if result.exc_info else None))


def entry_points(case: Any) -> list[tuple[str, Callable[[], Any]]]:
    """Every entry point that applies to the case's file or run."""
    import torch

    import modelsafe as ms

    from fuzzcraft import TRUSTED_MODULE, fuzz_net, small_module

    p = case.path
    # the human tables (rich) cost 5x the JSON output: every 10th case renders them
    fmt = [] if case.index % 10 == 0 else ["--json"]
    if case.target.startswith("single:"):
        base = case.target.partition(":")[2]
        ops = [("load", lambda: ms.load(p)), ("load_numpy", lambda: ms.load(p, framework="numpy")),
               ("open", lambda: _read_all(ms, p))]
        if base == "state":
            ops.append(("load_into", lambda: ms.load_into(small_module(), p)))
        if base == "objects":
            def objects_target() -> dict:
                model = fuzz_net(act=torch.nn.GELU)
                return {"model": model, "optimizer": torch.optim.Adam(model.parameters(), lr=0.1)}

            ops.append(("load_into", lambda: ms.load_into(objects_target(), p, strict=False)))
            ops.append(("load_trusted", lambda: ms.load(p, trusted=[TRUSTED_MODULE])))
        return ops + [("verify", lambda: _cli(["verify", p, *fmt])), ("show", lambda: _cli(["show", p, *fmt]))]

    def checkpoints(method: str) -> Any:
        ck = ms.Checkpoints(p)
        try:
            return ck.load() if method == "load" else getattr(ck, method)()
        finally:
            ck.close()

    return [("list", lambda: checkpoints("list")), ("latest", lambda: checkpoints("latest")),
            ("best", lambda: checkpoints("best")), ("ck_load", lambda: checkpoints("load")),
            ("load", lambda: ms.load(p)), ("load_numpy", lambda: ms.load(p, framework="numpy")),
            ("open", lambda: _read_all(ms, p)),
            ("load_into", lambda: ms.load_into({"model": small_module()}, p, strict=False)),
            ("verify", lambda: _cli(["verify", p, *fmt])), ("ls", lambda: _cli(["ls", p, *fmt])),
            ("show", lambda: _cli(["show", f"{p}@latest", *fmt]))]


def control_entry_points(job: dict) -> list[tuple[str, Callable[[], Any]]]:
    """Entry points with a known outcome each (CONTROL_OUTCOMES), for the harness's own test."""
    import importlib

    import modelsafe as ms

    from fuzzcraft import CANARY_CLASSES_MODULE, CANARY_IMPORT_MODULE

    def foreign() -> None:
        raise KeyError("not a ModelsafeError")

    def allocate() -> None:
        bytearray(2 * job["headroom"])

    return [("foreign", foreign),
            ("canary_call", lambda: importlib.import_module(CANARY_CLASSES_MODULE).touch()),
            ("canary_import", lambda: importlib.import_module(CANARY_IMPORT_MODULE)),
            ("hang", lambda: time.sleep(job["hang_s"] * 5)),
            ("memory", allocate),
            ("ok", lambda: ms.load(job["bases"]["files"]["state"])),
            ("error", lambda: ms.load(os.path.join(job["work"], "no-such-file.safetensors"))),
            ("crash", lambda: os._exit(3))]


CONTROL_OUTCOMES = ["foreign", "canary", "canary", "hang", "memory", "ok", "error", "crash"]


# entry points that rightly refuse an honest base: torch objects cannot be rebuilt from numpy arrays
HONEST_REFUSALS = {("single:objects", "load_numpy")}


class Child:
    """The state of one child process: canary watch, timer, measurements."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.trace = job["trace"]
        self.hang_s = job["hang_s"]
        self.watched: list[str] = []  # armed after the warm-up
        self.peak_rss = 0

    def traces(self) -> list[str]:
        found = sorted(os.listdir(self.trace))
        for name in found:
            os.unlink(os.path.join(self.trace, name))
        imported = [m for m in self.watched if m in sys.modules]
        self.watched = [m for m in self.watched if m not in imported]  # seen once; it cannot be seen again
        return found + [f"import {m}" for m in imported]

    def call(self, name: str, fn: Callable[[], Any]) -> dict:
        import signal

        def alarm(signum: int, frame: Any) -> None:
            raise Hang(f"{name} ran past {self.hang_s} s")

        before = _status("VmRSS")
        _reset_peak()
        signal.signal(signal.SIGALRM, alarm)
        start = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, self.hang_s)
            try:
                result = fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            record = dict(result) if isinstance(result, CliFailure) else {"outcome": "ok"}
        except Hang as exc:
            record = {"outcome": "hang", "type": "Hang", "location": "", "raised_at": _where(exc.__traceback__)[1],
                      "message": str(exc), "traceback": traceback.format_exc()[-4000:]}
        except BaseException as exc:  # noqa: BLE001 - every other outcome is recorded
            record = classify(exc)
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
        self.peak_rss = max(self.peak_rss, peak)
        record.update(op=name, seconds=round(seconds, 4), peak_extra=max(0, peak - before))
        traces = self.traces()
        if traces:
            record.update(outcome="canary", type="canary", location="", message=f"traces: {traces}",
                          canaries=traces)
        return record

    def run_case(self, index: int) -> dict:
        from fuzzcraft import Bases, make_case

        job = self.job
        if job["kind"] == "control":
            return self.run_control(index)
        scratch = os.path.join(job["work"], f"scratch-{os.getpid()}")
        try:
            case = make_case(job["kind"], job["seed"], index, Bases(**job["bases"]), scratch, self.trace)
        except Exception:  # noqa: BLE001 - a bug in the generator, reported apart from modelsafe's failures
            return {"kind": job["kind"], "seed": job["seed"], "index": index, "family": "?", "note": "",
                    "outcome": "harness", "ops": [], "detail": traceback.format_exc()[-3000:]}
        ops = []
        for name, fn in entry_points(case):
            ops.append(self.call(name, fn))
            if ops[-1]["outcome"] == "hang":
                break  # the process may be inside a blocked call's cleanup; later entry points say nothing new
        worst = min((op["outcome"] for op in ops), key=lambda o: RANK[o])
        return {"kind": case.kind, "seed": case.seed, "index": index, "family": case.family, "target": case.target,
                "note": case.note, "size": case.size, "outcome": worst, "ops": ops, "peak_rss": self.peak_rss}

    def run_control(self, index: int) -> dict:
        """A case whose one entry point fails in a known way: proves the harness sees that class."""
        name, fn = control_entry_points(self.job)[index]
        op = self.call(name, fn)
        return {"kind": "control", "seed": 0, "index": index, "family": name, "note": "", "size": 0,
                "outcome": op["outcome"], "ops": [op], "peak_rss": self.peak_rss}

    def warm_up(self) -> list[dict]:
        """Every entry point on every honest base: the records of those that do not succeed (findings in
        their own right), and every module an honest load needs is imported before the watch starts."""
        from fuzzcraft import SINGLE_BASES, WATCHED_MODULES, Bases, Case

        bases = Bases(**self.job["bases"])
        cases = [Case("honest", 0, 0, "honest", f"single:{b}", bases.files[b]) for b in SINGLE_BASES]
        cases.append(Case("honest", 0, 0, "honest", "run", bases.run))
        findings = []
        for case in cases:
            for name, fn in entry_points(case):
                record = self.call(name, fn)
                expected = "error" if (case.target, name) in HONEST_REFUSALS else "ok"
                if record["outcome"] != expected:
                    findings.append(dict(record, target=case.target))
        import fuzz_canary_classes

        fuzz_canary_classes.touch()  # the canaries are live: a call leaves a trace, and it is seen
        if self.traces() != ["touch"]:
            raise RuntimeError("the canary trace is not seen")
        self.watched = [m for m in WATCHED_MODULES if m not in sys.modules]
        return findings


def child_main() -> None:
    import resource

    job = json.load(sys.stdin)
    import torch

    torch.set_num_threads(1)
    import fuzzcraft

    fuzzcraft.fuzz_net()  # registers "fuzz.Net", as the process that wrote the bases did
    import fuzz_canary_classes  # noqa: F401 - already imported classes: the tree decoders may use them
    import fuzz_trusted  # noqa: F401 - imported by the trusted= entry point anyway; its import is no canary

    child = Child(job)
    out = open(job["results"], "a")
    findings = child.warm_up()
    limit = _status("VmSize") + job["headroom"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out.write(json.dumps({"warmup": "ok", "vm_limit": limit, "watched": child.watched,
                          "honest_findings": findings}) + "\n")
    out.flush()
    for index in job["indices"]:
        out.write(json.dumps(child.run_case(index)) + "\n")
        out.flush()


if __name__ == "__main__":
    child_main()
