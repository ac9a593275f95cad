"""FSDP (``train.sharding: fsdp``): 2 gloo ranks vs one process, a SIGKILL then rerun, mixed
precision and the refusals.

Run as a script (``python tests/test_sharding.py ROOT CKPT OUT CONFIG_JSON``, under torchrun), it
trains on the ``data`` fixture's clips and saves the final raw and EMA weights, gathered (rank 0;
other ranks to ``OUT.rank<N>.safetensors``).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from test_train import config, finish, lm, make, save_rank_result, weights_equal
from torch.distributed.tensor import DTensor

from musicgen import sharding as SH
from musicgen.data.store import load_tokens, save_text, save_tokens
from musicgen.params import config_hash
from musicgen.train import TrainConfig, run_identity, train

CFG = {"steps": 12, "checkpoint_every": 4, "eval_every": 6, "grad_accum": 2}
CFG |= {"cfg_dropout_per_sample": True, "sharding": "fsdp"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 clips of 12 frames whose codes step by their caption's offset (learnable)."""
    root = tmp_path_factory.mktemp("fsdp")
    rng = np.random.default_rng(1)
    offsets = rng.integers(1, 4, 24)
    codes = (rng.integers(0, 32, (24, 4, 1)) + offsets[:, None, None] * np.arange(12)) % 32
    ids = [f"clip{i:07d}xx" for i in range(24)]
    save_tokens(root / "tokens", ids, codes)
    states = [np.eye(8, dtype=np.float16)[[o, o + 3]] for o in offsets for _ in range(2)]
    save_text(root / "text", ids, 2, states)  # 2 caption variants per clip
    return root


def worker(root: Path, ckpt: str, out: str, cfg: dict, nproc: int, **popen) -> subprocess.Popen:
    """This file as a training script, in one process or ``nproc`` gloo ranks (torchrun)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [*launcher, __file__, str(root), str(root / ckpt), str(root / out), json.dumps(cfg)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


@pytest.fixture(scope="module")
def sharded_run(data):
    """The uninterrupted 2-rank FSDP run: its weights and the output of its launch."""
    proc = worker(data, "whole", "whole.safetensors", CFG, nproc=2)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return load_file(data / "whole.safetensors"), output


def test_fsdp_two_ranks_equal_one_process(data, sharded_run):
    """FSDP over 2 gloo ranks (fp32) gives the weights and EMA of one process with the whole
    batch (no sharding) within 1e-5 after 12 steps of 2 micro-batches; both ranks gather the
    same EMA; the checkpoint is sharded (DCP) and named by meta.json."""
    two, _ = sharded_run
    finish(worker(data, "one", "one.safetensors", {**CFG, "sharding": "none"}, nproc=1))
    one = load_file(data / "one.safetensors")
    init = {f"model.{k}": v for k, v in lm(32).state_dict().items()}
    assert not weights_equal({k: one[k] for k in init}, init, atol=1e-4)  # it trained
    assert weights_equal(one, two, atol=1e-5)
    assert weights_equal(two, load_file(data / "whole.rank1.safetensors"))
    meta = json.loads((data / "whole/meta.json").read_text())
    assert meta["complete"] and meta["step"] == 12 and meta["sharded"] == "sharded-00000012"
    files = sorted(p.name for p in (data / "whole" / meta["sharded"]).iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert sorted(p.name for p in (data / "whole").glob("sharded-*")) == [meta["sharded"]]


def test_fsdp_sigkill_then_rerun_equals_the_uninterrupted_run(data, sharded_run):
    """Both ranks killed mid-run after a sharded checkpoint; the rerun resumes from it and ends
    bit-equal to the uninterrupted run."""
    whole, _ = sharded_run
    proc = worker(
        data, "killed", "killed.safetensors", {**CFG, "slow_step_s": 0.3}, 2, start_new_session=True
    )
    meta = data / "killed/meta.json"
    deadline = time.time() + 120
    while not (meta.exists() and json.loads(meta.read_text())["step"] >= 4):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    for rank in range(2):  # torchrun's workers are not in its process group: killed one by one
        os.kill(int((data / f"killed.safetensors.pid{rank}").read_text()), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    stopped = json.loads(meta.read_text())
    assert not stopped.get("complete") and not (data / "killed.safetensors").exists()
    rerun = worker(data, "killed", "killed.safetensors", CFG, nproc=2)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-3000:]
    assert f"resuming from step {stopped['step']}" in output
    resumed = load_file(data / "killed.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank in this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_mixed_precision_gathers_half_and_keeps_fp32(one_rank_group):
    """bf16 policy: a block's weights are all-gathered in bf16 for its forward, while the
    sharded master weights and their gradients stay fp32."""
    model = SH.shard(lm(32), torch.bfloat16)
    seen = []
    model.layers[0].fc1.register_forward_hook(lambda m, i, o: seen.append(m.weight.dtype))
    codes = torch.randint(0, 32, (2, 4, 6))
    _, ce = model(codes, torch.randn(2, 2, 8), torch.ones(2, 2, dtype=torch.bool))
    ce.float().mean().backward()
    assert seen == [torch.bfloat16]
    params = list(model.parameters())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    assert all(isinstance(p, DTensor) for p in params)


def test_fsdp_in_one_process_and_unknown_shardings_are_refused(data):
    ids, _ = load_tokens(data / "tokens")
    with pytest.raises(ValueError, match="train.nproc_per_node .* at least 2"):
        train(lm(32), make(data, ids), make(data, ids), config(sharding="fsdp"), data / "c", "h")
    with pytest.raises(ValueError, match="train.sharding must be one of"):
        TrainConfig(sharding="zero3")
    assert "sharding" not in run_identity(TrainConfig())  # existing runs keep their resume key
    assert run_identity(TrainConfig(sharding="fsdp"))["sharding"] == "fsdp"


def main(root: Path, ckpt: Path, out: Path, overrides: dict) -> None:
    """Trains on the fixture's clips; saves the gathered ``model.*`` and ``ema.*`` to ``out``."""
    import musicgen.train as tr

    logging.basicConfig(level=logging.INFO)
    slow = overrides.pop("slow_step_s", 0.0)
    if slow:  # a step that lasts long enough for a kill to land mid-run; the test kills the pid
        Path(f"{out}.pid{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
        real_get_lr = tr.get_lr
        tr.get_lr = lambda step, cfg: time.sleep(slow) or real_get_lr(step, cfg)
    ids, _ = load_tokens(root / "tokens")
    model, cfg = lm(32), config(**overrides)
    if "WORLD_SIZE" in os.environ:  # joined here, so that the raw weights can be gathered after
        dist.init_process_group("gloo")
    result = train(
        model, make(root, ids), make(root, ids), cfg, ckpt, config_hash(asdict(cfg)), False
    )
    weights = SH.gathered(model.state_dict())
    if dist.is_initialized():
        dist.destroy_process_group()
    save_rank_result(out, weights, result["ema"])  # every rank gathers the same weights and EMA


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]))
