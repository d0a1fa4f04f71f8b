"""Run by test_stateful.py in a fresh interpreter: resume RUN into a fresh model and loader, print the rest."""

from __future__ import annotations

import json
import sys

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

import modelsafe as ms


def loader() -> StatefulDataLoader:
    return StatefulDataLoader(list(range(40)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))


if __name__ == "__main__":
    state = {"model": torch.nn.Linear(2, 2), "loader": loader()}
    info = ms.Checkpoints(sys.argv[1]).load_into(state)
    rest = [batch.tolist() for batch in state["loader"]]
    print(json.dumps({"step": info.step, "rest": rest, "weight": state["model"].weight.tolist()}))
