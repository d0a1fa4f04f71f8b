"""Run by test_transformers.py in fresh interpreters: ``train DIR [--stop-after N] [--resume]``.

A tiny BERT (built locally, no download) learns to classify random token ids; the
ModelsafeCallback checkpoints into DIR/run.  Writes DIR/final.safetensors at the end.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import modelsafe as ms
from modelsafe.integrations.transformers import ModelsafeCallback


class RandomIds(torch.utils.data.Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(5, 64, (n, 12), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Crash(TrainerCallback):
    def __init__(self, after: int) -> None:
        self.after = after

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.after:
            os._exit(3)  # killed: nothing is flushed, nothing cleaned up


class CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--stop-after", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    model = tiny_bert()
    args = TrainingArguments(
        output_dir=os.path.join(a.dir, "hf"), per_device_train_batch_size=4, max_steps=14, learning_rate=1e-3,
        lr_scheduler_type="linear", warmup_steps=2, save_strategy="steps", save_steps=4, logging_steps=2,
        report_to=[], seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )
    callback = ModelsafeCallback(os.path.join(a.dir, "run"), keep_last=2)
    count = CountSteps()
    callbacks = [callback, count] + ([Crash(a.stop_after)] if a.stop_after else [])
    trainer = Trainer(model=model, args=args, train_dataset=RandomIds(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=callback.resume_from() if a.resume else None)
    ms.save({"model": model.state_dict(), "step": trainer.state.global_step}, os.path.join(a.dir, "final.safetensors"))
    print("steps run here:", count.steps)
    print("trainer files:", sorted(os.listdir(args.output_dir)) if os.path.isdir(args.output_dir) else [])


if __name__ == "__main__":
    main()
