"""transformers: a Trainer checkpointed by ModelsafeCallback, stopped, and resumed by a new Trainer.

    python examples/transformers_trainer.py [DIR]

A tiny BERT built from a config (nothing is downloaded) learns on random token ids.
The first Trainer stops after 6 of 8 steps; the second resumes from the modelsafe
checkpoint of step 4 and finishes; its weights equal an uninterrupted run's.
"""

import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import modelsafe as ms
from modelsafe.integrations.transformers import ModelsafeCallback


class RandomIds(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.ids, self.labels = torch.randint(5, 64, (16, 12), generator=g), torch.randint(0, 2, (16,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def train(run: Path, stop_at: int | None = None, resume: bool = False) -> BertForSequenceClassification:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2))
    args = TrainingArguments(output_dir=str(run / "trainer"), per_device_train_batch_size=4, max_steps=8,
                             save_strategy="steps", save_steps=4, report_to=[], use_cpu=True, disable_tqdm=True,
                             learning_rate=1e-3, seed=0)
    callback = ModelsafeCallback(run / "checkpoints", keep_last=2)
    callbacks = [callback] + ([StopAt(stop_at)] if stop_at else [])
    trainer = Trainer(model=model, args=args, train_dataset=RandomIds(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=callback.resume_from() if resume else None)
    return model


def main(root: Path) -> None:
    train(root / "interrupted", stop_at=6)
    print("checkpoints:", [c.name for c in ms.Checkpoints(root / "interrupted" / "checkpoints").list()])
    resumed = train(root / "interrupted", resume=True)
    straight = train(root / "straight")
    same = all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
    print("resumed equals uninterrupted:", same)
    ms.save(resumed.state_dict(), root / "bert.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
