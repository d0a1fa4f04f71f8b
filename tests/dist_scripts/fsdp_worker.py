"""A worker for tests/test_distributed.py: FSDP2 model + Adam (and a DTensor) on gloo, CPU.

    torchrun --nproc-per-node N fsdp_worker.py save CKPT REF [--async ASYNC_CKPT] [ckrun RUN] [s3 URL]
    torchrun --nproc-per-node N fsdp_worker.py load CKPT REF [CKPT REF ...]

Run with plain ``python`` (no torchrun) it is one process with a plain model and
plain tensors: the world size 1 side of the resharding tests.

``save`` trains one step from a fixed seed, saves the sharded state with
ms.distributed.save and, from rank 0, the full tensors (gathered) as a plain
ms.save reference file.  ``load`` builds the model from another seed, loads CKPT with
ms.distributed.load_into and checks every full tensor against REF.  Prints "OK rank N".
"""

import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh

import modelsafe as ms


def build(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    return model


def full(value):
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(state):
    """Every tensor of the (nested) state gathered whole, keyed by a dotted path; other leaves as they are."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif isinstance(node, torch.Tensor):
            out[prefix[:-1]] = full(node).detach().clone()
        else:
            out[prefix[:-1]] = node
    walk(state, "")
    return out


SHARDED = "RANK" in os.environ  # under torchrun


def setup(seed):
    model = build(seed)
    if SHARDED:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if seed == 0 else 0.5)
    torch.manual_seed(seed + 100)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    opt.zero_grad()
    torch.manual_seed(seed + 200)
    table = torch.randn(7, 5)
    if SHARDED:
        table = distribute_tensor(table, mesh, [Shard(0)])  # a bare DTensor beside the model
    msd, osd = get_state_dict(model, opt)
    return model, opt, {"model": msd, "optim": osd, "extra": {"table": table, "epoch": seed + 3}}


def save(ckpt, ref, async_ckpt=None):
    _, _, state = setup(0)
    ms.distributed.save(state, ckpt)
    if async_ckpt is not None:
        handle = ms.distributed.save(state, async_ckpt, async_save=True)
        handle.wait()
    whole = full_state(state)
    if not SHARDED or dist.get_rank() == 0:
        ms.save(whole, ref)


def run_checkpoints(directory):
    """Three sharded saves into a Checkpoints run keeping the last 2; then resume from the latest."""
    _, _, state = setup(0)
    ck = ms.Checkpoints(directory, keep_last=2, monitor="loss", name="step{step}")
    for step in range(3):
        state["extra"]["epoch"] = step
        info = ck.save(state, step=step, metrics={"loss": 1.0 / (step + 1)}, distributed=True)
        assert (info is None) == (SHARDED and dist.get_rank() != 0), info
    model, opt, fresh = setup(1)
    ms.distributed.load_into(fresh, ms.Checkpoints(directory).latest().path)
    assert fresh["extra"]["epoch"] == 2
    assert torch.equal(full(fresh["extra"]["table"]), full(state["extra"]["table"]))


def run_async_checkpoints(directory):
    """Background sharded saves into a run keeping the last 2 (ck.save returns once the state is copied).

    Training goes on between the saves (in-place changes, collectives on the default
    group); a failing background save raises on every rank at wait(); a save rank 0
    refuses raises on every rank; then resume from the latest on both ranks.
    """
    from modelsafe.async_save import PendingSave

    _, _, state = setup(0)
    ck = ms.Checkpoints(directory, async_save=True, keep_last=2, monitor="loss")
    saved = {}
    for step in range(4):
        if step == 3:  # fails in the background (a set of objects is no JSON), on every rank
            pending = ck.save({**state, "bad": {1, object()}}, metrics={"loss": 1.0}, distributed=True)
            try:
                ck.wait()
            except ms.ModelsafeError as exc:
                assert "not storable" in str(exc), exc
            else:
                raise AssertionError("a failed background save was not raised")
            assert pending.done() and pending.exception() is not None
        state["extra"]["epoch"] = step
        saved[step] = full(state["extra"]["table"]).clone()
        pending = ck.save(state, metrics={"loss": 1.0 / (step + 1)}, distributed=True)  # step: one past the latest
        assert isinstance(pending, PendingSave) and (pending.name, pending.step) == (f"step{step}", step), pending
        with torch.no_grad():  # training goes on while the save is written: none of this may leak in
            state["extra"]["table"].add_(100.0)
            for value in state["model"].values():
                value.add_(1.0)
        dist.all_reduce(torch.ones(1))  # training's own collective, beside the background save's
    info = ck.wait()
    assert (info is None) == (dist.get_rank() != 0) and (info is None or info.name == "step3"), info
    assert ms.Checkpoints(directory).latest().name == "step3"  # committed once wait() returns, on every rank
    if dist.get_rank() == 0:  # retention is rank 0's, after the commit: the others may still see step1
        assert [i.name for i in ck.list()] == ["step2", "step3"]
    fixed = ms.Checkpoints(directory + "-fixed", async_save=True, name="last")
    fixed.save(state, step=0, distributed=True)
    try:
        fixed.save(state, step=1, distributed=True)  # the name is taken by step 0
    except ms.ModelsafeError as exc:
        assert dist.get_rank() != 0 or isinstance(exc, ms.RunConflictError), exc
    else:
        raise AssertionError("a refused save did not raise")
    fixed.close()
    ck.close()
    for step in (2, 3):
        _, _, fresh = setup(1)
        ms.distributed.load_into(fresh, ms.Checkpoints(directory).info(step).path)
        assert fresh["extra"]["epoch"] == step
        assert torch.equal(full(fresh["extra"]["table"]), saved[step]), step
    print(f"OK async run rank {dist.get_rank()}", flush=True)


def save_s3(url):
    """The same sharded state to an object store (AWS_* environment: the moto server), by
    ms.distributed.save and by a Checkpoints run; the test process reads both back."""
    _, _, state = setup(0)
    ms.distributed.save(state, f"{url}/c2")
    ck = ms.Checkpoints(f"{url}/run", keep_last=1)
    for step in range(2):
        info = ck.save(state, step=step, distributed=True)
        assert (info is None) == (SHARDED and dist.get_rank() != 0), info
    ck.close()


def load(ckpt, ref):
    model, opt, state = setup(1)
    ms.distributed.load_into(state, ckpt)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    msd, osd = get_state_dict(model, opt)
    whole = full_state({"model": msd, "optim": osd, "extra": state["extra"]})
    expected = ms.load(ref)
    assert set(whole) == set(expected), sorted(set(whole) ^ set(expected))
    for key, value in expected.items():
        got = whole[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(got, value), key
        else:
            assert got == value, (key, got, value)


def load_damaged(ckpt):
    """Loading a checkpoint with a damaged rank file fails on every rank, naming that file and a tensor."""
    _, _, state = setup(1)
    try:
        ms.distributed.load_into(state, ckpt)
    except ms.CorruptCheckpointError as exc:
        assert "rank-00001.safetensors" in str(exc) and "tensor '" in str(exc), str(exc)
    else:
        raise AssertionError("a damaged checkpoint loaded")


def run(args):
    mode = args[0]
    if mode == "save":
        save(args[1], args[2], args[args.index("--async") + 1] if "--async" in args else None)
        if "ckrun" in args:
            run_checkpoints(args[args.index("ckrun") + 1])
        if "ackrun" in args:
            run_async_checkpoints(args[args.index("ackrun") + 1])
        if "s3" in args:
            save_s3(args[args.index("s3") + 1])
    elif mode == "load":
        for ckpt, ref in zip(args[1::2], args[2::2]):
            if ref == "damaged":
                load_damaged(ckpt)
            else:
                load(ckpt, ref)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


def main():
    if not SHARDED:
        for command in " ".join(sys.argv[1:]).split(" + "):  # several commands in one process
            run(command.split())
        print("OK single", flush=True)
        return
    dist.init_process_group("gloo")
    try:
        run(sys.argv[1:])
        print(f"OK rank {dist.get_rank()}", flush=True)
    except BaseException:
        # the other ranks may be waiting in a collective this rank will never join: exit now,
        # and torchrun ends them (a barrier here would hang until the launch is killed)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        dist.barrier()  # without it gloo aborts now and then at exit
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
