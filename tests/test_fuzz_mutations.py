"""Byte mutations (flipped bits, interesting bytes, cut, inserted and duplicated ranges,
truncation, JSON tokens replaced; headers usually resealed so the damage reaches the
parser) of single files, shards, checkpoint manifests and run files, through every
reader entry point: a ModelsafeError or a correct load, never another exception, a
hang, an allocation past the cap, or a canary.

A sample runs always; MODELSAFE_SOAK=1 runs the full 10,000 cases with the budget check.
Rerun one case alone with ``python scripts/fuzz.py --case mutation:SEED:INDEX``.
"""

from __future__ import annotations

import pytest

import fuzzrun

pytestmark = pytest.mark.timeout(1800)

SEED = 1
SAMPLE = 500
FULL = 10_000


def test_byte_mutations_sample(fuzz_setup):
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "mutation", SEED, range(SAMPLE), batch_size=SAMPLE), budget=False)


@pytest.mark.slow
def test_byte_mutations_full_count(fuzz_setup, soak):
    if not soak:
        pytest.skip(f"the full {FULL} cases run with MODELSAFE_SOAK=1 (a {SAMPLE}-case sample runs always)")
    fuzzrun.assert_clean(fuzzrun.run_cases(fuzz_setup, "mutation", SEED + 1, range(FULL), batch_size=1000), budget=True)
