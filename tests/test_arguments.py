"""Wrong arguments of the public calls: an InvalidArgumentError (also ValueError and
TypeError) that names the call, the argument, what was given and what to pass — never a
bare TypeError from deep inside, never a setting silently ignored."""

from __future__ import annotations

import pytest
import torch

import modelsafe as ms


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    ms.save(torch.nn.Linear(2, 2).state_dict(), path)
    return path


def expect(call, *patterns):
    with pytest.raises(ms.InvalidArgumentError) as info:
        call()
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    return info.value


def test_save_with_swapped_arguments_says_they_look_swapped(tmp_path):
    expect(lambda: ms.save(str(tmp_path / "x.safetensors"), torch.zeros(2)),
           "ms.save(obj, path)", "not a Tensor", "look swapped")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("path", [None, 5, b"x.safetensors"])
def test_save_and_load_name_a_path_that_is_not_one(path):
    expect(lambda: ms.save(torch.zeros(2), path), "ms.save(obj, path): path must be", type(path).__name__)
    expect(lambda: ms.load(path), "ms.load(path): path must be", type(path).__name__)
    expect(lambda: ms.open(path), "ms.open(path): path must be", type(path).__name__)


def test_an_empty_path_is_named_as_such():
    expect(lambda: ms.load(""), "ms.load(path): path is empty")
    expect(lambda: ms.save(torch.zeros(2), ""), "ms.save(obj, path): path is empty")


def test_load_of_a_tensor_says_it_reads_files():
    expect(lambda: ms.load(torch.zeros(2)), "ms.load(path)", "not a Tensor", "reads a file")


def test_load_into_a_state_dict_in_memory_points_to_load_state_dict(saved):
    model = torch.nn.Linear(2, 2)
    expect(lambda: ms.load_into(model, model.state_dict()), "ms.load_into(target, path)", "OrderedDict",
           "load_state_dict(state)")


def test_load_into_with_swapped_arguments_says_so(saved):
    expect(lambda: ms.load_into(saved, torch.nn.Linear(2, 2)), "not a Linear", "look swapped")


def test_load_into_a_target_it_cannot_restore_names_the_file(saved):
    error = expect(lambda: ms.load_into(None, saved), "cannot restore into a NoneType", str(saved))
    assert error.path == str(saved)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_map_location_cuda_without_cuda_names_the_device_and_the_file(saved):
    error = expect(lambda: ms.load(saved, map_location="cuda"), "'cuda'", str(saved), "map_location='cpu'")
    assert error.path == str(saved)


@pytest.mark.parametrize("bad", [0, ["cpu"], "no-such-device"])
def test_map_location_that_is_no_device_is_an_argument_error(saved, bad):
    expect(lambda: ms.load(saved, map_location=bad), "map_location", str(saved))


@pytest.mark.parametrize("call", ["load", "open", "save"])
def test_storage_options_for_a_local_path_are_refused_not_ignored(saved, call):
    options = {"anon": True}
    run = {
        "load": lambda: ms.load(saved, storage_options=options),
        "open": lambda: ms.open(saved, storage_options=options),
        "save": lambda: ms.save(torch.zeros(2), saved, storage_options=options),
    }[call]
    expect(run, f"ms.{call}: storage_options", "local path", "drop storage_options")
    assert ms.load(saved, storage_options=None).keys() == {"weight", "bias"}   # the file is untouched


def test_storage_options_of_a_url_must_be_a_dict():
    with pytest.raises(ms.InvalidArgumentError, match="storage_options must be a dict"):
        ms.load("memory://bucket/x.safetensors", storage_options=["anon"])


@pytest.mark.parametrize("flag", ["verify", "allow_pickle", "mmap"])
def test_flags_must_be_bools(saved, flag):
    expect(lambda: ms.load(saved, **{flag: "no"}), f"{flag} must be True or False", "'no'")


def test_trusted_as_a_bare_string_is_refused_not_read_letter_by_letter(saved):
    expect(lambda: ms.load(saved, trusted="os"), "trusted must be a list of strings", "trusted=['my_models']")


def test_unknown_framework_lists_the_known_ones(saved):
    expect(lambda: ms.open(saved, framework="pytorch"), "framework must be one of", "torch", "'pytorch'")


@pytest.mark.parametrize("metadata, pattern", [([1, 2], "metadata must be a dict"), ({1: "x"}, "metadata keys must be strings")])
def test_save_metadata_must_be_a_dict_of_strings(tmp_path, metadata, pattern):
    expect(lambda: ms.save(torch.zeros(2), tmp_path / "m.safetensors", metadata=metadata), pattern)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"select": 5}, "select must be a key prefix"),
    ({"select": ["fc.weight", 3]}, "select must hold non-empty strings"),
    ({"rename": ["hidden."]}, "rename must be a dict"),
    ({"rename": {"hidden.": 0}}, "rename maps key prefixes"),
    ({"strict": "no"}, "strict must be True or False"),
])
def test_load_into_options_are_checked(saved, kwargs, pattern):
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    expect(lambda: ms.load_into(model, saved, **kwargs), pattern)
    assert torch.equal(model.weight, before)


def test_load_into_select_may_be_a_generator(saved):
    model = torch.nn.Linear(2, 2)
    report = ms.load_into(model, saved, select=(k for k in ["weight"]))
    assert report.loaded == ["weight"]


def test_build_of_something_not_callable():
    expect(lambda: ms.build(5), "ms.build(cls, *args, **kwargs)", "not 5")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"name": 5}, "name must be a non-empty string"),
    ({"name": ""}, "name must be a non-empty string"),
    ({"aliases": [3]}, "aliases must hold non-empty strings"),
    ({"aliases": 3}, "aliases must be a list of strings"),
])
def test_register_and_rebuildable_check_names(kwargs, pattern):
    class Thing:
        pass

    expect(lambda: ms.register(Thing, **kwargs), pattern)
    if "name" in kwargs:
        expect(lambda: ms.rebuildable(Thing, **kwargs), pattern)


def test_rebuildable_of_a_function_says_to_register_it():
    expect(lambda: ms.rebuildable(len), "@rebuildable decorates classes", "ms.register")
