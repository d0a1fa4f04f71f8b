"""transformers: a ``TrainerCallback`` that checkpoints a ``Trainer`` through ``ms.Checkpoints``.

Each time the Trainer would save (``save_strategy`` / ``save_steps``), the callback
writes one modelsafe checkpoint instead of the Trainer's own pickled files: model
weights, optimizer, scheduler, the Trainer's state (``trainer_state.json`` as JSON) and
the global random generators — checksummed, committed atomically, with keep-last /
keep-best retention by a metric.  After an evaluation the checkpoint waits for its
metrics, so ``monitor="eval_loss"`` ranks by the evaluation of the same step.

Resume a Trainer (the model, optimizer, scheduler, data position and RNG come back, so
a resumed run equals an uninterrupted one)::

    callback = ModelsafeCallback("runs/bert", keep_last=2, keep_best=1, monitor="eval_loss")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume_from())   # None on the first run

``resume_from()`` returns None when the run has no checkpoint yet.  Otherwise it writes a
small directory the Trainer reads for its step counter and data position (the trainer
state and the model weights, both plain data) and returns its path; the callback then
restores the optimizer, scheduler and generators from the modelsafe checkpoint when
training begins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

from transformers import TrainerCallback

import modelsafe as ms

__all__ = ["ModelsafeCallback"]

TRAINER_STATE = "trainer_state.json"   # the names Trainer.train(resume_from_checkpoint=...) reads
WEIGHTS = "model.safetensors"


class ModelsafeCallback(TrainerCallback):
    """Checkpoint a transformers ``Trainer`` into ``directory`` with ``ms.Checkpoints``.

    ``keep_last``, ``keep_best``, ``monitor`` (a metric the Trainer logs or evaluates,
    e.g. ``"eval_loss"``), ``mode``, ``name`` and ``async_save`` are those of
    :class:`modelsafe.Checkpoints`.  The Trainer's own checkpoint files are not written
    (its ``should_save`` is taken over), so set ``save_strategy``/``save_steps`` as usual.

    >>> from modelsafe.integrations.transformers import ModelsafeCallback
    >>> callback = ModelsafeCallback("runs/bert", keep_last=2)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: int | None = None, keep_best: int | None = None,
                 monitor: str | None = None, mode: str = "min", name: str = "step{step}", async_save: bool = False) -> None:
        self.checkpoints = ms.Checkpoints(directory, keep_last=keep_last, keep_best=keep_best, monitor=monitor,
                                          mode=mode, name=name, async_save=async_save)
        self.monitor = monitor
        self._metrics: dict[str, float] = {}
        self._pending = False          # a save waits for the evaluation of the same step
        self._resuming: Any = None     # CheckpointInfo being resumed from
        self._rng_at_epoch = False     # restore the generators at the epoch start (else at the first step)
        self._resume_dir: str | None = None

    # -- resuming ----------------------------------------------------------------------------
    def resume_from(self, which: Any = "latest") -> str | None:
        """A directory to pass as ``trainer.train(resume_from_checkpoint=...)``; None when there is no checkpoint."""
        if which == "latest" and self.checkpoints.latest() is None:
            return None
        info = self.checkpoints.info(which)
        saved = {"trainer_state": None}
        ms.load_into(saved, info.path)  # reads that entry only, not the weights
        state = json.loads(saved["trainer_state"])
        self._resume_dir = tempfile.mkdtemp(prefix="modelsafe-resume-")
        with open(os.path.join(self._resume_dir, TRAINER_STATE), "w") as f:
            json.dump(state, f)
        self.checkpoints.export(os.path.join(self._resume_dir, WEIGHTS), info.name, key="model")
        epoch = state.get("epoch")
        self._rng_at_epoch = isinstance(epoch, (int, float)) and float(epoch).is_integer()
        self._resuming = info
        return self._resume_dir

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self._resuming is None:
            return
        target = {"model": model, "optimizer": optimizer, "scheduler": lr_scheduler}
        self.checkpoints.load_into(target, self._resuming.name, rng=False)
        shutil.rmtree(self._resume_dir, ignore_errors=True)  # the Trainer has read it by now

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._resuming is not None and self._rng_at_epoch:
            self._restore_rng()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._resuming is not None:  # mid-epoch: after the Trainer skipped the batches already trained
            self._restore_rng()

    def _restore_rng(self) -> None:
        self.checkpoints.load_into(None, self._resuming.name)  # the generators as they were at the save
        self._resuming = None

    # -- saving ------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_save = False  # modelsafe writes the checkpoint, not the Trainer's pickles
            if control.should_evaluate:
                self._pending = True     # written once the evaluation of this step has reported
            else:
                self._save(state, kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._metrics.update({k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))})
        if self._pending:
            self._pending = False
            self._save(state, kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._metrics.update({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))})

    def on_train_end(self, args, state, control, **kwargs):
        self.checkpoints.wait()

    def _save(self, state: Any, objects: dict) -> None:
        metrics = {self.monitor: self._metrics[self.monitor]} if self.monitor in self._metrics else None
        checkpoint = {
            "model": objects["model"].state_dict(),
            "optimizer": objects["optimizer"].state_dict(),
            "scheduler": objects["lr_scheduler"].state_dict(),
            "trainer_state": _trainer_state_json(state),
        }
        self.checkpoints.save(checkpoint, step=state.global_step, metrics=metrics)


def _trainer_state_json(state: Any) -> str:
    """The TrainerState as Trainer.save_to_json writes it (plain JSON, stored as one string)."""
    return json.dumps(dataclasses.asdict(state), sort_keys=True)
