"""Hugging Face save_pretrained directories: ms.load, ms.open and ms.load_into read them.

    python examples/pretrained_directory.py [DIR]

A tiny BERT is saved in shards (model-0000k-of-0000n.safetensors + an index json) and
loaded back into a fresh model with one call.
"""

import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

import modelsafe as ms


def main(root: Path) -> None:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    model = BertModel(config).eval()
    model.save_pretrained(root / "bert", max_shard_size="20KB")
    print("files:", sorted(p.name for p in (root / "bert").iterdir()))

    fresh = BertModel(config).eval()
    report = ms.load_into(fresh, root / "bert")
    print("load_into:", report.describe())
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        print("outputs equal:", torch.equal(fresh(ids).last_hidden_state, model(ids).last_hidden_state))
    with ms.open(root / "bert") as reader:  # lazy: reads only what is asked for
        print("embedding rows 0-1:", tuple(reader.get_slice("embeddings.word_embeddings.weight")[0:2].shape))
    ms.save(ms.load(root / "bert"), root / "bert.safetensors")  # the same weights as one modelsafe file


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
