#!/usr/bin/env python
"""Fuzz modelsafe's readers with crafted manifests and byte mutations; print what happened.

    python scripts/fuzz.py                          # 10,000 crafted manifests + 10,000 mutations + 200 resource cases
    python scripts/fuzz.py --manifests 500 --mutations 500 --seed 7
    python scripts/fuzz.py --json > fuzz.json       # the summary (and every failing case) as JSON
    python scripts/fuzz.py --case manifest:1:37     # rerun one case alone and show its tracebacks
    python scripts/fuzz.py --out cases.jsonl        # also keep every case's outcome as it completes
    python scripts/fuzz.py --summarize cases.jsonl  # the summary of kept outcomes (of an interrupted run too)

Cases come from tests/fuzzcraft.py, deterministically from kind, seed and index; they
run in capped child processes (tests/fuzzrun.py).  The summary table gives the count
of each outcome, the distinct failures (exception type and the modelsafe line that
raised it, with a case to rerun), the slowest entry point, the largest peak memory
beyond the case's file size, and every entry point over the issue's budget (2 s,
256 MB).  Exit status 1 when any case failed (canary, hang, crash, memory, foreign)
or went over budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import fuzzrun  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=10_000, help="crafted manifest cases")
    parser.add_argument("--mutations", type=int, default=10_000, help="byte mutation cases")
    parser.add_argument("--resources", type=int, default=200, help="small files asking for much (huge recipes, stand-ins)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--case", help="run one case KIND:SEED:INDEX alone and print its outcome in full")
    parser.add_argument("--batch", type=int, default=200, help="cases per child process")
    parser.add_argument("--hang", type=float, default=20.0, help="seconds after which one entry point is a hang")
    parser.add_argument("--headroom", type=int, default=fuzzrun.HEADROOM >> 20,
                        help="MiB of address space a child may add beyond its start-up size (RLIMIT_AS)")
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--out", help="append every case's outcome to this JSON-lines file as batches complete")
    parser.add_argument("--summarize", metavar="JSONL", help="summarize outcomes kept with --out; run nothing")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            outcomes = [json.loads(line) for line in f if line.strip()]
        return report(fuzzrun.summarize([o for o in outcomes if "outcome" in o]), outcomes, args.json)

    with tempfile.TemporaryDirectory(prefix="modelsafe-fuzz-", dir=args.dir) as work:
        setup = fuzzrun.prepare(work)
        if args.case:
            kind, seed, index = args.case.split(":")
            outcome = fuzzrun.run_cases(setup, kind, int(seed), [int(index)], hang_s=args.hang,
                                        headroom=args.headroom << 20)[-1]
            print(json.dumps(outcome, indent=1))
            return 1 if outcome["outcome"] in fuzzrun.FAILURES else 0
        started = time.perf_counter()
        outcomes = []
        for kind, indices in _chunks(args):  # manifests and mutations alternate: a cut-short run has both
            got = fuzzrun.run_cases(setup, kind, args.seed, indices, batch_size=args.batch, hang_s=args.hang,
                                    headroom=args.headroom << 20)
            if any(o["kind"] == "honest" for o in outcomes):
                got = [o for o in got if o["kind"] != "honest"]
            outcomes += got
            _keep(args.out, got)
            _progress(len(outcomes), args.manifests + args.mutations + args.resources)
        summary = fuzzrun.summarize(outcomes)
        summary["seconds"] = round(time.perf_counter() - started, 1)
    return report(summary, outcomes, args.json)


def _chunks(args: argparse.Namespace):
    counts = {"manifest": args.manifests, "mutation": args.mutations, "resource": args.resources}
    for offset in range(0, max(counts.values()), args.batch):
        for kind, count in counts.items():
            if offset < count:
                yield kind, range(args.start + offset, args.start + min(count, offset + args.batch))


def _keep(path: str | None, outcomes: list[dict]) -> None:
    if path:
        with open(path, "a") as f:
            for outcome in outcomes:
                f.write(json.dumps(outcome) + "\n")


def report(summary: dict, outcomes: list[dict], as_json: bool) -> int:
    """Print the summary (table or JSON); the exit status says whether anything failed."""
    summary.setdefault("seconds", None)
    if as_json:
        summary["failing_cases"] = [c for c in outcomes if c.get("outcome") in fuzzrun.FAILURES]
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(render(summary))
    return 1 if summary["failures"] or summary["over_budget"] else 0


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done}/{total} cases", end="" if done < total else "\n", file=sys.stderr, flush=True)


def render(summary: dict) -> str:
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    lines = [f"cases            {summary['cases']}  ({summary['seconds']} s)"]
    lines += [f"  {outcome:<14} {count}" for outcome, count in summary["outcomes"].items()]
    slow, big = summary["slowest"], summary["largest"]
    if slow.get("case"):
        lines.append(f"slowest          {slow['seconds']:.3f} s  {slow['op']} of {slow['case']} ({slow['family']}: {slow['note'][:80]})")
    if big.get("case"):
        lines.append(f"largest extra    {mib(big['peak_extra'])}  {big['op']} of {big['case']} ({big['family']}: {big['note'][:80]})")
    lines.append(f"peak RSS         {mib(summary['peak_rss'])}")
    lines.append(f"over budget      {len(summary['over_budget'])} entry points (> {fuzzrun.BUDGET_SECONDS} s or "
                 f"> {mib(fuzzrun.BUDGET_EXTRA_BYTES)} beyond the file size)")
    for item in summary["over_budget"][:10]:
        lines.append(f"  {item['case']} {item['op']}: {item['seconds']} s, {mib(item['peak_extra'] or 0)} ({item['note'][:60]})")
    lines.append("")
    lines.append("distinct failures (outcome, type, where raised, cases, entry points, families, example case)")
    for e in summary["distinct_failures"]:
        ex = e["example"]
        lines.append(f"  {e['outcome']:<8} {e['type']:<22} {e['location'] or e['raised_at']:<48} x{e['cases']:<5} "
                     f"{','.join(e['ops'])}  [{','.join(e['families'])}]")
        lines.append(f"           e.g. --case {ex['case']} ({ex['note'][:70]}): {ex['message'][:150]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
