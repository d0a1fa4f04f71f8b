"""``gluon.Trainer``: its optimizer state (Adam's moments, momentum, update counts, learning rate).

``trainer.save_states`` pickles the optimizer; here the state is plain arrays and
numbers: ``{"optimizer": "adam", "learning_rate": 0.01, "num_update": 7,
"update_counts": {0: 7, ...}, "states": {0: (mean, var), ...}}`` keyed by the
trainer's parameter index.  ``ms.load_into(trainer, path)`` restores it into a trainer
built over the same parameters; ``ms.load`` gives this dict back (a Trainer is bound
to parameters and a kvstore, so it is not rebuilt from a file).
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import gluon

from ...errors import UnsupportedObjectError
from ...objects import encode_object
from ...tree import Flattener, Unflattener, format_path
from ..protocol import StateMismatch

KIND = "mxnet.trainer"
_FIELDS = {"optimizer", "learning_rate", "num_update", "update_counts", "states"}


def _updater(trainer: gluon.Trainer, path: tuple = ()) -> Any:
    # Trainer keeps one Updater per context in _updaters and has no public getter for the states
    # other than save_states, which pickles them
    if trainer._update_on_kvstore or len(trainer._updaters) != 1:
        raise UnsupportedObjectError(
            f"cannot save {format_path(path)}: this gluon.Trainer updates on a kvstore or on several devices; "
            "modelsafe stores the state of a single-device trainer (kvstore=None)",
            key=format_path(path),
        )
    return trainer._updaters[0]


def trainer_state(trainer: gluon.Trainer, path: tuple = ()) -> dict:
    """The trainer's optimizer state as plain arrays and numbers."""
    updater = _updater(trainer, path)
    opt = trainer.optimizer
    return {
        "optimizer": type(opt).__name__.lower(),
        "learning_rate": float(trainer.learning_rate),
        "num_update": int(opt.num_update),
        "update_counts": {int(k): int(v) for k, v in opt._index_update_count.items()},
        "states": {int(k): v for k, v in updater.states.items()},
    }


class TrainerCodec:
    kinds = (KIND,)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, gluon.Trainer)

    def encode(self, fl: Flattener, trainer: gluon.Trainer, path: tuple) -> dict:
        state = trainer_state(trainer, path)
        return encode_object(fl, trainer, path, KIND, lambda node: node.update(state=fl.encode(state, path)))

    def decode(self, un: Unflattener, node: dict) -> dict:
        return un.decode(node.get("state"))


def _arrays(value: Any) -> list:
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return [] if value is None else [value]


def conform(trainer: gluon.Trainer, state: Any) -> dict:
    """``state`` checked against ``trainer``: same optimizer, indices of its parameters, shapes of its weights."""
    if not (isinstance(state, dict) and set(state) == _FIELDS):
        raise StateMismatch("", "not a gluon.Trainer state", "a gluon.Trainer state")
    name = type(trainer.optimizer).__name__.lower()
    if state["optimizer"] != name:
        raise StateMismatch("optimizer", repr(state["optimizer"]), repr(name))
    params = trainer._params  # the parameter list the state's indices refer to (no public getter)
    states, counts = state["states"], state["update_counts"]
    if not (isinstance(states, dict) and isinstance(counts, dict)):
        raise StateMismatch("states", type(states).__name__, "dicts by parameter index")
    for index in list(states) + list(counts):
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise StateMismatch("states", f"parameter index {index!r}", f"{len(params)} parameters")
    for index, value in states.items():
        shape = params[index].shape
        for arr in _arrays(value):
            if not hasattr(arr, "shape") or (shape and tuple(arr.shape) != tuple(shape)):
                raise StateMismatch(f"states[{index}]", f"shape {getattr(arr, 'shape', type(arr).__name__)}",
                                    f"shape {tuple(shape)} of {params[index].name}")
    if not all(isinstance(state[k], (int, float)) for k in ("learning_rate", "num_update")):
        raise StateMismatch("learning_rate", "not a number", "numbers")
    return state


def _on(value: Any, ctx: mx.Context) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_on(v, ctx) for v in value)
    if value is None:
        return None
    from .blocks import as_mxnet

    return as_mxnet(value).as_in_context(ctx)


def assign(trainer: gluon.Trainer, state: dict) -> None:
    """Restore a conformed state into ``trainer``."""
    updater = _updater(trainer)
    params = trainer._params
    updater.states = {i: _on(v, params[i].list_ctx()[0]) for i, v in state["states"].items()}  # beside its weight
    updater.states_synced = dict.fromkeys(updater.states, False)
    opt = trainer.optimizer
    opt.num_update = int(state["num_update"])
    opt._index_update_count.clear()  # Optimizer keeps the counts behind its (private) update-count helpers
    opt._index_update_count.update(state["update_counts"])
    trainer.set_learning_rate(float(state["learning_rate"]))


CODECS = [TrainerCodec()]
