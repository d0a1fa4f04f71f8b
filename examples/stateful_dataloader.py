"""The Stateful protocol: a data loader saved beside the model resumes mid-epoch.

    python examples/stateful_dataloader.py [DIR]

torchdata's StatefulDataLoader (anything with state_dict()/load_state_dict()) is
saved by its state in a checkpoint; a fresh process restores it in place with
``Checkpoints.load_into`` and continues with the next batch, not the first.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

import modelsafe as ms


def state() -> dict:
    torch.manual_seed(0)
    loader = StatefulDataLoader(list(range(24)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    return {"model": torch.nn.Linear(4, 2), "loader": loader}


def main(root: Path) -> None:
    s = state()
    batches = iter(s["loader"])
    print("seen:", [next(batches).tolist() for _ in range(2)])
    ms.Checkpoints(root / "run").save(s, step=2)
    rest = [b.tolist() for b in batches]
    print("rest:", rest)
    ms.save(s["model"].state_dict(), root / "model.safetensors")
    out = subprocess.run([sys.executable, __file__, "--resume", str(root)], capture_output=True, text=True, check=True)
    resumed = json.loads(out.stdout)
    print("resumed rest:", resumed)
    print("resumed equals uninterrupted:", resumed == rest)


def resume(root: Path) -> None:
    s = state()
    ms.Checkpoints(root / "run").load_into(s)
    print(json.dumps([b.tolist() for b in s["loader"]]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--resume"]:
        resume(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
