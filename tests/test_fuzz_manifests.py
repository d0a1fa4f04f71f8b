"""Crafted manifests (tree nodes, tensor entries, attrs, aliases, recipes, metadata, header
entries, run files, checkpoint manifests; tests/fuzzcraft.py) through every reader entry
point: each loads or is refused with a ModelsafeError -- no other exception, no hang, no
allocation past the cap, and nothing a file names is ever imported or called (canaries).

A sample runs always; MODELSAFE_SOAK=1 runs the full 10,000 cases and also checks the
per-entry-point budget (2 s, 256 MB beyond the file's size).  A failing case is rerun
alone with ``python scripts/fuzz.py --case manifest:SEED:INDEX``.
"""

from __future__ import annotations

import os

import pytest

import fuzzcraft
import fuzzrun

pytestmark = pytest.mark.timeout(1800)

SEED = 1
SAMPLE = 500
FULL = 10_000


def test_the_harness_sees_every_failure_class(fuzz_setup):
    """Controls: a foreign exception, a called and an imported canary, a hang, an allocation past the
    cap and a dying child are each reported as such; an honest load is ok and a refusal an error."""
    count = len(fuzzrun.CONTROL_OUTCOMES)
    outcomes = fuzzrun.run_cases(fuzz_setup, "control", 0, range(count), hang_s=2)
    outcomes = [o for o in outcomes if o["kind"] == "control"]
    assert [o["outcome"] for o in outcomes] == fuzzrun.CONTROL_OUTCOMES, outcomes
    by_name = {o["family"]: o for o in outcomes}
    assert by_name["foreign"]["ops"][0]["type"] == "KeyError" and "Traceback" in by_name["foreign"]["ops"][0]["traceback"]
    assert by_name["canary_call"]["ops"][0]["canaries"] == ["touch"]
    assert "imported-fuzz_canary_mod" in by_name["canary_import"]["ops"][0]["canaries"]
    assert by_name["error"]["ops"][0]["type"] == "CheckpointNotFoundError"
    summary = fuzzrun.summarize(outcomes)
    assert summary["failures"] == 6 and summary["outcomes"]["ok"] == 1


def _files(directory: str) -> dict:
    out = {}
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path).replace(directory, "SCRATCH"))
            elif os.path.isfile(path) and not rel.endswith(".modelsafe.lock"):
                with open(path, "rb") as f:
                    out[rel] = f.read()
            else:
                out[rel] = "special" if not os.path.isdir(path) else "dir"
    return out


@pytest.mark.parametrize("kind", ["manifest", "mutation"])
def test_a_case_is_rebuilt_exactly_from_its_number(fuzz_setup, tmp_path, kind):
    bases = fuzzcraft.Bases(**fuzz_setup["bases"])
    for index in range(0, 400, 7):
        first = fuzzcraft.make_case(kind, SEED, index, bases, str(tmp_path / "a"), fuzz_setup["trace"])
        again = fuzzcraft.make_case(kind, SEED, index, bases, str(tmp_path / "b"), fuzz_setup["trace"])
        assert (first.family, first.target, first.note) == (again.family, again.target, again.note)
        assert _files(str(tmp_path / "a")) == _files(str(tmp_path / "b")), (kind, index, first.note)


def test_the_sample_covers_every_family(fuzz_setup, tmp_path):
    bases = fuzzcraft.Bases(**fuzz_setup["bases"])
    families = {fuzzcraft.pick_family(fuzzcraft.case_rng("manifest", SEED, i)) for i in range(SAMPLE)}
    assert families == set(fuzzcraft.FAMILIES)
    notes = [fuzzcraft.make_case("manifest", SEED, i, bases, str(tmp_path / "c"), fuzz_setup["trace"]).note
             for i in range(60)]
    assert len(set(notes)) > 40  # the cases differ from one another


def test_crafted_manifests_sample(fuzz_setup):
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "manifest", SEED, range(SAMPLE), batch_size=SAMPLE), budget=False)


@pytest.mark.slow
def test_crafted_manifests_full_count(fuzz_setup, soak):
    if not soak:
        pytest.skip(f"the full {FULL} cases run with MODELSAFE_SOAK=1 (a {SAMPLE}-case sample runs always)")
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "manifest", SEED + 1, range(FULL), batch_size=1000), budget=True)


RESOURCE_SAMPLE = 40


def test_resource_cases_sample(fuzz_setup):
    """Huge recipes (with and without state) and thousands of stand-ins in small files: refused or
    loaded within the address-space cap, never a MemoryError (the cap is the file's size + 384 MiB)."""
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "resource", SEED, range(RESOURCE_SAMPLE), batch_size=RESOURCE_SAMPLE),
                  budget=False, min_ok=0)


@pytest.mark.slow
def test_resource_cases_full_count(fuzz_setup, soak):
    if not soak:
        pytest.skip(f"400 resource cases run with MODELSAFE_SOAK=1 (a {RESOURCE_SAMPLE}-case sample runs always)")
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "resource", SEED + 1, range(400), batch_size=400), budget=True, min_ok=0)
