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

from ...tree import Flattener
from ..protocol import Framework
from .blocks import CODECS as _BLOCK_CODECS, parameter_arrays, register_builtins
from .load_targets import LOAD_TARGETS, _AsBlock
from .tensors import ADAPTER
from .trainer import CODECS as _TRAINER_CODECS

__all__ = ["FRAMEWORK", "ADAPTER", "CODECS"]


class ParameterDictCodec:
    """``block.collect_params()``: saved as ``{full name: array}``, loaded back as that dict."""

    kinds: tuple[str, ...] = ()  # a plain dict in the file: nothing to decode

    def handles(self, tp: type) -> bool:
        return issubclass(tp, gluon.ParameterDict)

    def encode(self, fl: Flattener, params: gluon.ParameterDict, path: tuple) -> dict:
        return fl.encode(parameter_arrays(_AsBlock(params), path), path)

    def decode(self, un: object, node: dict) -> None:  # pragma: no cover - kinds is empty
        raise NotImplementedError


CODECS = [*_BLOCK_CODECS, *_TRAINER_CODECS, ParameterDictCodec()]

FRAMEWORK = Framework(
    name="mxnet",
    tensors=ADAPTER,
    codecs=CODECS,
    register_builtins=register_builtins,
    load_targets=LOAD_TARGETS,
    format_tag="mx",
)
