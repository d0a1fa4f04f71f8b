"""Lightning: every ModelCheckpoint file a modelsafe file; fit resumes from it exactly.

    python examples/lightning_checkpoints.py [DIR]

Fits 2 epochs with ``ModelsafeCheckpointIO``, then a new Trainer resumes the fit to 3
epochs from the last checkpoint, and compares with an uninterrupted 3-epoch fit.
"""

import sys
import tempfile
from pathlib import Path

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
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def fit(root: Path, epochs: int, resume: str | None = None) -> tuple[Regressor, L.Trainer]:
    L.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(48, 8, generator=torch.Generator().manual_seed(1)), torch.randn(48, 1))
    model = Regressor()
    trainer = L.Trainer(
        max_epochs=epochs, plugins=[ModelsafeCheckpointIO()], logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, accelerator="cpu",
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True), ckpt_path=resume)
    return model, trainer


def main(root: Path) -> None:
    fit(root / "interrupted", 2)
    last = root / "interrupted" / "ckpt" / "last.ckpt"
    checkpoint = ms.load(last)  # a modelsafe file: no pickle, every tensor checksummed
    print("checkpoint at epoch", checkpoint["epoch"], "step", checkpoint["global_step"], "hparams", checkpoint["hyper_parameters"])
    resumed, _ = fit(root / "interrupted", 3, resume=str(last))
    straight, _ = fit(root / "straight", 3)
    same = all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
    print("resumed equals uninterrupted:", same)
    ms.save(resumed.state_dict(), root / "regressor.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
