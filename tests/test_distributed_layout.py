"""modelsafe.distributed.layout: the manifest's sharding block round-trips and refuses what does not tile."""

import json

import pytest
from hypothesis import given, strategies as st

import modelsafe as ms
from modelsafe.distributed.layout import Chunk, Layout, TensorEntry, layout_json, parse_layout, rank_file


@st.composite
def layouts(draw):
    world = draw(st.integers(1, 4))
    files = tuple(rank_file(r) for r in range(world))
    tensors = {}
    for i in range(draw(st.integers(0, 4))):
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
        if shape:  # rows split among ranks, as Shard(0) does
            cuts = sorted(draw(st.lists(st.integers(0, shape[0]), min_size=world - 1, max_size=world - 1)))
            bounds = [0, *cuts, shape[0]]
            chunks = tuple(Chunk((lo,) + (0,) * (len(shape) - 1), (hi - lo,) + shape[1:], files[r], f"t{i}@{lo}",
                                 draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)))
                           for r, (lo, hi) in enumerate(zip(bounds, bounds[1:])))
        else:
            chunks = (Chunk((), (), files[0], f"t{i}@", "0" * 16),)
        tensors[f"t{i}"] = TensorEntry(draw(st.sampled_from(["float32", "bfloat16", "int64", "bool"])), shape,
                                       draw(st.booleans()), chunks)
    objects = {f"o{i}": {"float": 0.5} for i in range(draw(st.integers(0, 2)))}
    paths = {name: ["state", name] for name in [*tensors, *objects]}
    return Layout(world, files, tensors, objects, {k: tuple(v) for k, v in paths.items()})


@given(layouts())
def test_layout_round_trips_through_json(layout):
    assert parse_layout(json.loads(json.dumps(layout_json(layout))), "m") == layout


def _block(**change):
    block = {"version": 1, "world_size": 2, "files": ["rank-00000.safetensors", "rank-00001.safetensors"],
             "tensors": {"w": {"dtype": "float32", "shape": [4, 2], "chunks": [
                 {"offsets": [0, 0], "sizes": [2, 2], "file": "rank-00000.safetensors", "key": "w@0,0", "xxh3": "0" * 16},
                 {"offsets": [2, 0], "sizes": [2, 2], "file": "rank-00001.safetensors", "key": "w@2,0", "xxh3": "1" * 16},
             ]}}, "objects": {}, "paths": {}}
    block.update(change)
    return block


def test_a_valid_block_parses():
    layout = parse_layout(_block(), "m")
    assert layout.tensors["w"].chunks[1].offsets == (2, 0) and layout.path_of("w") == ("w",)


@pytest.mark.parametrize("block", [
    None, [], _block(version=2), _block(world_size=0), _block(world_size=True), _block(files="rank-00000.safetensors"),
    _block(files=["rank-00000.safetensors"] * 2), _block(files=["rank-0.safetensors"]),
    _block(tensors={"w": {"dtype": "float32", "shape": [4, 2], "chunks": []}}),
    _block(tensors={"w": {"dtype": "float32", "shape": [2 ** 40, 2 ** 40], "chunks": []}}),
    _block(tensors={"w": {"dtype": "float32", "shape": [-1], "chunks": []}}),
    _block(objects={"w": 1}),
    _block(paths={"w": []}), _block(paths={"w": [1.5]}),
])
def test_hostile_blocks_are_corrupt(block):
    with pytest.raises(ms.CorruptCheckpointError):
        parse_layout(block, "m")


def test_overlapping_chunks_are_corrupt():
    block = _block()
    block["tensors"]["w"]["chunks"][1]["offsets"] = [1, 0]
    block["tensors"]["w"]["chunks"].append(
        {"offsets": [3, 0], "sizes": [1, 2], "file": "rank-00001.safetensors", "key": "w@3,0", "xxh3": "2" * 16})
    block["tensors"]["w"]["chunks"][1]["sizes"] = [1, 2]
    block["tensors"]["w"]["chunks"][0]["sizes"] = [2, 2]  # rows 0-1 and 1: overlap at row 1, row 2 missing
    with pytest.raises(ms.CorruptCheckpointError, match="overlap"):
        parse_layout(block, "m")
