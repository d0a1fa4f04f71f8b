"""A Keras callback that checkpoints through :class:`modelsafe.Checkpoints` and resumes ``fit``.

::

    import modelsafe.integrations.keras as mk

    checkpoint = mk.ModelCheckpoint("runs/exp1", monitor="val_loss", keep_last=2, keep_best=1)
    start = checkpoint.restore(model)          # 0 on a fresh run; the next epoch after a crash
    model.fit(x, y, validation_data=..., epochs=10, initial_epoch=start, callbacks=[checkpoint])

Each epoch's end saves ``{"model": model, "optimizer": model.optimizer, "epoch": next}`` as
one committed, checksummed checkpoint (no pickle; the file rebuilds with ``ms.load``),
named after the epoch and the monitored metric, with Checkpoints' retention.  A resumed
``fit`` continues with the same weights, optimizer state, epoch count and Keras global
seed generator; TensorFlow's op-level seeds and dropout layers' own generators are not
restored, so shuffle with a fixed seed or not at all when a resumed run must equal an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import os
from typing import Any

import keras

import modelsafe as ms

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(keras.callbacks.Callback):
    """Save model + optimizer + epoch after every epoch into a modelsafe run directory.

    ``monitor``/``mode``/``keep_last``/``keep_best``/``async_save`` are those of
    :class:`modelsafe.Checkpoints`; ``name`` is its checkpoint name template (``step`` is
    the epoch index, metrics are Keras' logs).  ``checkpoints`` is the underlying run.

    >>> import tempfile, modelsafe.integrations.keras as mk
    >>> mk.ModelCheckpoint(tempfile.mkdtemp(), keep_last=1).restore(keras.Sequential([keras.Input((2,))]))
    0
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        monitor: str | None = None,
        mode: str = "min",
        keep_last: int | None = None,
        keep_best: int | None = None,
        async_save: bool = False,
        name: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__()
        template = name or ("epoch{step:03d}" if monitor is None else f"epoch{{step:03d}}-{monitor}{{{monitor}:.4f}}")
        self.checkpoints = ms.Checkpoints(directory, keep_last=keep_last, keep_best=keep_best, monitor=monitor, mode=mode,
                                       name=template, async_save=async_save, storage_options=storage_options)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if _number(v)}
        self.checkpoints.save(_state(self.model, epoch + 1), step=epoch, metrics=metrics)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.checkpoints.wait()  # async saves: finished (and their errors raised) before fit returns

    def restore(self, model: keras.Model, which: Any = "latest") -> int:
        """Restore ``model`` (and its compiled optimizer) from checkpoint ``which``; the epoch to resume at.

        Returns 0 when the run has no checkpoint yet, so ``fit(..., initial_epoch=cb.restore(model))``
        is right on a fresh run and after a crash alike.
        """
        if which == "latest" and self.checkpoints.latest() is None:
            return 0
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)  # its variables must exist to receive the saved ones
        state = _state(model, 0)
        self.checkpoints.load_into(state, which)
        return int(state["epoch"])


def _state(model: keras.Model, epoch: int) -> dict:
    state: dict[str, Any] = {"model": model, "epoch": epoch}
    if getattr(model, "optimizer", None) is not None:
        state["optimizer"] = model.optimizer
    return state


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
