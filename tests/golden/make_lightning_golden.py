"""Write tests/golden/lightning.ckpt, a real Lightning 2 checkpoint (run by hand; needs lightning).

    python tests/golden/make_lightning_golden.py

Lightning is not a test dependency: the file is committed so conversion is checked on what
Lightning itself writes (state_dict, loops, callbacks, optimizer_states, lr_schedulers,
hyper_parameters).
"""

import os

import lightning as L
import torch

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.1, hidden: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, index):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]


data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, default_root_dir=os.path.join(here, ".lightning"))
trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=4))
trainer.save_checkpoint(os.path.join(here, "lightning.ckpt"))
