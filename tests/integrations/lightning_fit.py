"""Run by test_lightning.py in fresh interpreters: ``fit DIR EPOCHS [--resume CKPT] [--no-pickle]``.

Writes ``DIR/final.safetensors``: the model's and optimizer's state after the fit.
"""

from __future__ import annotations

import argparse
import os
import pickle

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import modelsafe as ms
from modelsafe.integrations.lightning import ModelsafeCheckpointIO


class Regressor(L.LightningModule):
    def __init__(self, width: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]


def data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(48, 8, generator=g), torch.randn(48, 1, generator=g))
    return DataLoader(ds, batch_size=8, shuffle=True)  # shuffled by the global torch RNG


def refuse_pickle() -> None:
    def refused(*a, **k):
        raise AssertionError("pickle was used to load a checkpoint")

    pickle.load = pickle.loads = refused
    pickle.Unpickler = refused
    torch.load = refused


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("epochs", type=int)
    p.add_argument("--resume")
    p.add_argument("--no-pickle", action="store_true")
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--no-rng", action="store_true")
    args = p.parse_args()
    L.seed_everything(0, verbose=False)
    model = Regressor()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=os.path.join(args.dir, "ckpt"), monitor="train_loss", save_top_k=2, save_last=True)
    trainer = L.Trainer(
        max_epochs=args.epochs, plugins=[ModelsafeCheckpointIO(async_save=args.async_save, rng=not args.no_rng)], callbacks=[checkpoints],
        logger=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        default_root_dir=args.dir, accelerator="cpu",
    )
    if args.no_pickle:
        refuse_pickle()
    trainer.fit(model, data(), ckpt_path=args.resume)
    opt = trainer.optimizers[0]
    ms.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(), "step": trainer.global_step},
            os.path.join(args.dir, "final.safetensors"))
    print("best", checkpoints.best_model_path)


if __name__ == "__main__":
    main()
