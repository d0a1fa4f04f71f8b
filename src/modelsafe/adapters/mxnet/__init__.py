"""MXNet 1.9 (Gluon): arrays, Blocks, ParameterDicts and Trainers, as one
:class:`~modelsafe.adapters.protocol.Framework`.

* ``mx.nd.NDArray`` / ``mx.np.ndarray`` of every dtype MXNet has (:mod:`.tensors`);
* Gluon Blocks saved as recipe + parameters and rebuilt by ``ms.load`` (:mod:`.blocks`),
  ``block.collect_params()`` saved as a dict of its arrays (as ``ParameterDict.save``),
  ``gluon.Trainer`` optimizer state (:mod:`.trainer`);
* ``ms.load_into`` targets: a Block (structured names, as ``load_parameters``), a
  ParameterDict (its full names), a Trainer, an array (:mod:`.load_targets`).

RNG: MXNet 1.9 can seed its generators (``mx.random.seed``) but not read their
state back, so checkpoints cannot record it; seed explicitly when resuming.
"""

from __future__ import annotations

from mxnet import gluon

from ...objects import encode_object
from ...tree import Flattener, Unflattener
from ..protocol import Framework
from .blocks import CODECS as _BLOCK_CODECS, parameter_arrays, register_builtins
from .load_targets import LOAD_TARGETS, _AsBlock
from .tensors import ADAPTER
from .trainer import CODECS as _TRAINER_CODECS

__all__ = ["FRAMEWORK", "ADAPTER", "CODECS"]


class ParameterDictCodec:
    """``block.collect_params()``: its arrays by full name (as ``ParameterDict.save``); ``ms.load`` gives that dict."""

    kinds = ("mxnet.parameters",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, gluon.ParameterDict)

    def encode(self, fl: Flattener, params: gluon.ParameterDict, path: tuple) -> dict:
        arrays = parameter_arrays(_AsBlock(params), path)
        return encode_object(fl, params, path, "mxnet.parameters", lambda node: node.update(state=fl.encode(arrays, path)))

    def decode(self, un: Unflattener, node: dict) -> dict:
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "saved parameters must be a dict")
        return state


CODECS = [*_BLOCK_CODECS, *_TRAINER_CODECS, ParameterDictCodec()]

FRAMEWORK = Framework(
    name="mxnet",
    tensors=ADAPTER,
    codecs=CODECS,
    register_builtins=register_builtins,
    load_targets=LOAD_TARGETS,
    format_tag="mx",
)
