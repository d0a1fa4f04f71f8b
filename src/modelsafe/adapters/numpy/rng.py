"""numpy's legacy global generator (``np.random``) for the checkpoint ``rng`` block."""

from __future__ import annotations

from typing import Any

import numpy as np

_MT_WORDS = 624  # words of a Mersenne Twister state


def _is_words(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(type(w) is int and 0 <= w < 1 << 32 for w in value))


def state_json(state: dict) -> dict:
    """``np.random.get_state(legacy=False)`` as JSON."""
    return {"bit_generator": state["bit_generator"], "key": np.asarray(state["state"]["key"]).tolist(),
            "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def state_from_json(entry: Any) -> dict:
    """What :func:`state_json` wrote, checked; ValueError otherwise."""
    if not (isinstance(entry, dict) and entry.get("bit_generator") == "MT19937" and _is_words(entry.get("key"), _MT_WORDS)
            and type(entry.get("pos")) is int and 0 <= entry["pos"] <= _MT_WORDS and entry.get("has_gauss") in (0, 1)
            and type(entry.get("gauss")) in (int, float)):
        raise ValueError("'numpy' must hold an MT19937 key of 624 words, pos, has_gauss and gauss")
    return {"bit_generator": "MT19937", "state": {"key": np.array(entry["key"], dtype=np.uint32), "pos": entry["pos"]},
            "has_gauss": entry["has_gauss"], "gauss": float(entry["gauss"])}


class GlobalRng:
    name = "numpy"

    def capture(self) -> dict:
        return state_json(np.random.get_state(legacy=False))

    def restore(self, state: Any, where: str) -> None:
        np.random.set_state(state_from_json(state))


RNG = GlobalRng()
