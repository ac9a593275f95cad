"""The training loop: learning, resume (also after SIGKILL), extension, accumulation, EMA, DDP.

Run as a script (``python tests/test_train.py ROOT CKPT OUT CONFIG_JSON``, alone or under
torchrun), it trains on a dataset written by the ``dataset`` fixture and saves the final raw and
EMA weights (rank 0): the subprocess tests use it.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import killed_after_first_checkpoint
from safetensors.torch import load_file, save_file

from musicgen.data.store import CodesAndText, load_tokens, save_text, save_tokens
from musicgen.lm import LM, LMConfig
from musicgen.params import config_hash
from musicgen.train import (
    TrainConfig,
    batch_rows,
    code_hash,
    distributed,
    dropout_seed,
    get_lr,
    is_main_process,
    load_checkpoint,
    make_optimizer,
    read_live_curves,
    restore,
    run_identity,
    save_checkpoint,
    start_disagreement,
    token_entropy,
    torchrun_command,
    train,
    validation_ce,
)


@pytest.fixture
def dataset(tmp_path):
    """Codes that follow a rule the LM can learn: each frame repeats the previous one + the text's
    offset, so both the context and the condition matter."""
    rng = np.random.default_rng(0)
    n, T, card = 24, 12, 32
    offsets = rng.integers(1, 4, n)
    start = rng.integers(0, card, (n, 4, 1))
    codes = (start + offsets[:, None, None] * np.arange(T)) % card
    ids = [f"clip{i:07d}xx" for i in range(n)]
    save_tokens(tmp_path / "tokens", ids, codes)
    states = [np.eye(8, dtype=np.float16)[[o, o + 3]] for o in offsets for _ in range(2)]
    save_text(tmp_path / "text", ids, 2, states)
    return tmp_path, ids, card


def make(dataset_dir, ids):
    return CodesAndText(dataset_dir / "tokens", dataset_dir / "text", ids)


def lm(card):
    torch.manual_seed(0)
    return LM(LMConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=card, text_dim=8))


def config(**kw):
    base = dict(
        steps=40,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        checkpoint_every=10,
        cfg_dropout=0.2,
        eval_batch_size=8,
    )
    return TrainConfig(**{**base, **kw})


def test_training_beats_step_zero_and_token_frequencies(dataset):
    root, ids, card = dataset
    data = make(root, ids)
    model = lm(card)
    out = train(
        model, data, data, config(steps=60, ema_decay=0.8), root / "ckpt", "h", progress=False
    )
    model.load_state_dict(out["ema"])
    final = validation_ce(model, data, 8, torch.device("cpu"))
    assert final.mean() < out["val_ce_init"].mean() - 0.5
    assert final.mean() < token_entropy(data.codes, card).mean()


def interrupt_after_first_checkpoint(monkeypatch, data, card, ckpt_dir, run_hash, live_dir=None):
    """Runs training until its first checkpoint is written, then kills it."""
    with killed_after_first_checkpoint(monkeypatch):
        train(lm(card), data, data, config(steps=20), ckpt_dir, run_hash, False, live_dir)


def test_resumed_run_equals_uninterrupted_run(dataset, monkeypatch):
    root, ids, card = dataset
    data = make(root, ids)
    full = train(lm(card), data, data, config(steps=20), root / "a", "h", progress=False)
    interrupt_after_first_checkpoint(monkeypatch, data, card, root / "b", "h")
    import musicgen.train as tr

    steps_run = []
    real_get_lr = tr.get_lr
    monkeypatch.setattr(
        tr, "get_lr", lambda step, cfg: steps_run.append(step) or real_get_lr(step, cfg)
    )
    resumed = train(lm(card), data, data, config(steps=20), root / "b", "h", progress=False)
    assert steps_run == list(range(10, 20))  # it resumed at the checkpoint, not from scratch
    for k, v in full["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    assert without_timings(full["history"]) == without_timings(resumed["history"])


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in history]


def test_checkpoint_of_another_config_is_not_resumed(dataset, monkeypatch):
    root, ids, card = dataset
    data = make(root, ids)
    interrupt_after_first_checkpoint(monkeypatch, data, card, root / "c", "old")
    out = train(lm(card), data, data, config(steps=20), root / "c", "new", progress=False)
    assert out["history"][0]["step"] == 0  # started over, with its own step-0 evaluation


def test_checkpoint_of_other_training_code_is_not_resumed(dataset, monkeypatch):
    root, ids, card = dataset
    data = make(root, ids)
    interrupt_after_first_checkpoint(monkeypatch, data, card, root / "c", "h")
    import musicgen.train as tr

    monkeypatch.setattr(tr, "code_hash", lambda: "edited")
    out = train(lm(card), data, data, config(steps=20), root / "c", "h", progress=False)
    assert out["history"][0]["step"] == 0


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == pytest.approx(1.0)
    assert get_lr(99, cfg) == pytest.approx(0.1, abs=0.01)
    lrs = [get_lr(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_batches_cover_each_epoch_once():
    rows = np.concatenate([batch_rows(i * 5, 5, 20, seed=1) for i in range(4)])
    assert sorted(rows.tolist()) == list(range(20))
    assert not np.array_equal(batch_rows(0, 5, 20, 1), batch_rows(0, 5, 20, 2))


def test_token_entropy():
    uniform = np.tile(np.arange(8), (2, 4, 4))  # (2, 4, 32)
    assert token_entropy(uniform, 8) == pytest.approx([np.log(8)] * 4)
    assert token_entropy(np.zeros((2, 4, 5), int), 8) == pytest.approx([0.0] * 4)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="cfg_dropout"):
        TrainConfig(cfg_dropout=1.5)


def test_other_schedules():
    constant = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="constant")
    assert [get_lr(s, constant) for s in (0, 9, 10, 99, 500)] == pytest.approx([0.1, 1, 1, 1, 1])
    wsd = TrainConfig(
        steps=100, lr=1.0, warmup_steps=10, schedule="wsd", schedule_steps=50, min_lr_ratio=0.1
    )
    assert get_lr(39, wsd) == pytest.approx(1.0)  # stable until the last 20% of 50 steps
    assert get_lr(45, wsd) == pytest.approx(0.55)  # linear decay
    assert get_lr(50, wsd) == pytest.approx(0.1) and get_lr(99, wsd) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule_steps"):
        TrainConfig(schedule="wsd")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_run_identity_leaves_out_what_does_not_change_the_weights():
    base = run_identity(TrainConfig())
    for knob in ("eval_every", "checkpoint_every", "eval_batch_size", "nproc_per_node"):
        assert knob not in base
    assert run_identity(TrainConfig(device="cpu", eval_every=7)) == base
    assert "steps" in base  # cosine: the horizon is steps
    assert run_identity(TrainConfig(steps=5)) != base
    constant = run_identity(TrainConfig(schedule="constant"))
    assert "steps" not in constant
    assert run_identity(TrainConfig(schedule="constant", steps=900)) == constant
    assert run_identity(TrainConfig(lr=0.5)) != base


def weights_equal(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulation_equals_one_step_with_the_whole_batch(dataset):
    root, ids, card = dataset
    data = make(root, ids)
    runs = []
    for batch_size, grad_accum in ((8, 1), (4, 2), (2, 4)):
        model = lm(card)
        cfg = config(steps=3, batch_size=batch_size, grad_accum=grad_accum)
        train(model, data, data, cfg, root / f"acc{grad_accum}", "h", progress=False)
        runs.append(state(model))
    assert not weights_equal(runs[0], state(lm(card)), atol=1e-4)  # it trained
    assert weights_equal(runs[0], runs[1], atol=1e-6)
    assert weights_equal(runs[0], runs[2], atol=1e-6)


def test_ema_follows_the_decay_every_ema_every_steps(dataset):
    """EMA = 0.5-decay average of the raw weights after steps 3 and 6 (ema_every 3), starting
    from the initial weights. The constant schedule makes a 3-step run the first half of a 6-step
    one."""
    root, ids, card = dataset
    data = make(root, ids)
    raw = {}
    for steps in (3, 6):
        model = lm(card)
        cfg = config(steps=steps, schedule="constant", ema_decay=0.5, ema_every=3)
        out = train(model, data, data, cfg, root / f"ema{steps}", "h", progress=False)
        raw[steps] = state(model)
    expected = state(lm(card))
    for steps in (3, 6):
        expected = {k: 0.5 * v + 0.5 * raw[steps][k] for k, v in expected.items()}
    assert weights_equal(out["ema"], expected, atol=1e-7)
    assert not weights_equal(out["ema"], raw[6], atol=1e-4)


def test_weight_decay_on_all_or_matrices():
    model = lm(32)
    for on, n_decayed in (("all", sum(1 for _ in model.parameters())), ("matrices", None)):
        groups = make_optimizer(model, TrainConfig(weight_decay_on=on)).param_groups
        decayed = {id(p) for p in groups[0]["params"]}
        if n_decayed is not None:
            assert len(decayed) == n_decayed and not groups[1]["params"]
        else:
            assert {id(p) for p in model.embed.parameters()}.isdisjoint(decayed)
            assert id(model.layers[0].fc1.weight) in decayed
            assert id(model.layers[0].fc1.bias) not in decayed


def test_grad_checkpointing_gives_the_same_gradients(dataset):
    root, ids, card = dataset
    b = make(root, ids).batch(np.arange(6))
    grads = []
    for checkpointing in (False, True):
        model = lm(card).train()
        model.grad_checkpointing = checkpointing
        _, ce = model(b.codes, b.cond, b.cond_mask)
        ce.mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert weights_equal(grads[0], grads[1], atol=1e-7)


def test_grad_scaler_state_round_trips(tmp_path):
    model, cfg = lm(32), TrainConfig(steps=10)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for _ in range(2):  # grows the tracker
        scaler.scale(sum(p.sum() for p in model.parameters())).backward()
        scaler.step(optimizer)
        scaler.update()
    saved = scaler.state_dict()
    assert saved["_growth_tracker"] == 2
    ema = state(model)
    meta = {"run_hash": "h", "step": 2, "code": code_hash()}
    save_checkpoint(tmp_path, model, ema, optimizer, scaler, meta)
    tensors, meta = load_checkpoint(tmp_path, "h", cfg)
    fresh = torch.amp.GradScaler("cpu")
    restore(tensors, meta, lm(32), ema, make_optimizer(model, cfg), fresh)
    assert fresh.state_dict() == saved


@pytest.mark.parametrize("schedule", ["constant", "wsd"])
def test_raising_steps_continues_a_finished_run(dataset, monkeypatch, schedule):
    root, ids, card = dataset
    data = make(root, ids)
    import musicgen.train as tr

    cfg = dict(schedule=schedule, schedule_steps=16, warmup_steps=3)
    longer = lm(card)
    train(longer, data, data, config(steps=20, **cfg), root / "20", "h", progress=False)
    ckpt, run_hash = root / "12", config_hash(run_identity(config(**cfg)))
    train(lm(card), data, data, config(steps=12, **cfg), ckpt, run_hash, progress=False)
    steps_run = []
    real_get_lr = tr.get_lr
    monkeypatch.setattr(tr, "get_lr", lambda s, c: steps_run.append(s) or real_get_lr(s, c))
    extended = lm(card)
    train(extended, data, data, config(steps=20, **cfg), ckpt, run_hash, progress=False)
    assert steps_run == list(range(12, 20))  # continued from the finished run's final state
    assert weights_equal(state(extended), state(longer))


def test_raising_steps_of_a_cosine_run_starts_over_and_says_why(dataset, caplog):
    root, ids, card = dataset
    data = make(root, ids)
    short, longer = config(steps=6), config(steps=8)
    train(lm(card), data, data, short, root / "cos", config_hash(run_identity(short)), False)
    with caplog.at_level(logging.WARNING, logger="musicgen.train"):
        out = train(
            lm(card), data, data, longer, root / "cos", config_hash(run_identity(longer)), False
        )
    assert out["history"][0]["step"] == 0
    assert "train.steps changed" in caplog.text and "horizon" in caplog.text


def test_torchrun_command():
    argv = ["stages/train.py", "--out", "x"]
    assert torchrun_command({"nproc_per_node": 1}, argv, env={}) is None
    cmd = torchrun_command({"nproc_per_node": 2}, argv, env={})
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        *argv,
    ]
    assert torchrun_command({"nproc_per_node": 2}, argv, env={"WORLD_SIZE": "2"}) is None
    multi = torchrun_command({"nnodes": 2, "rdzv_endpoint": "head:29500"}, argv, env={})
    assert "--rdzv_endpoint=head:29500" in multi and "--nnodes=2" in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command({"nnodes": 2}, argv, env={})


def test_live_curves_of_a_resumed_run_are_those_of_one_run(dataset, monkeypatch):
    """dvclive logs every step once: a resumed run replays the checkpoint's history."""
    root, ids, card = dataset
    data = make(root, ids)
    interrupt_after_first_checkpoint(monkeypatch, data, card, root / "ck", "h", root / "live")
    train(lm(card), data, data, config(steps=20), root / "ck", "h", False, root / "live")
    curves = read_live_curves(root / "live")
    assert curves["step"].tolist() == list(range(21))
    assert curves["val/ce"].notna().tolist() == [s in (0, 20) for s in range(21)]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(curves)
    assert {f"train/ce_cb{k}" for k in range(4)} <= set(curves)
    assert json.loads((root / "live/metrics.json").read_text())["step"] == 20


def run_worker(root: Path, ckpt: str, out: str, cfg: dict, nproc: int = 1, **popen):
    """Starts this file as a training script, in one process or ``nproc`` under torchrun."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [*launcher, __file__, str(root), str(root / ckpt), str(root / out), json.dumps(cfg)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]


def test_ddp_two_processes_equal_one_process(dataset):
    """2 gloo ranks, each with half of every global batch, give the weights of one process with
    the whole batch: equal up to float rounding of the gradient sum (atol 1e-5 after 8 steps)."""
    root, _, card = dataset
    cfg = {"steps": 8, "batch_size": 8, "grad_accum": 2, "cfg_dropout_per_sample": True}
    finish(run_worker(root, "ckpt1", "one.safetensors", cfg))
    finish(run_worker(root, "ckpt2", "two.safetensors", cfg, nproc=2))
    one, two = load_file(root / "one.safetensors"), load_file(root / "two.safetensors")
    init = {f"model.{k}": v for k, v in state(lm(card)).items()}
    assert not weights_equal({k: one[k] for k in init}, init, atol=1e-4)  # it trained
    assert weights_equal(one, two, atol=1e-5)
    assert weights_equal(two, load_file(root / "two.rank1.safetensors"))  # the same on both ranks
    meta = json.loads((root / "ckpt2/meta.json").read_text())  # rank 0 wrote the checkpoint
    assert meta["complete"] and meta["step"] == 8


def test_ddp_ranks_that_would_start_from_different_steps_are_refused(dataset):
    """Rank 1 finds a checkpoint at step 2 in its folder, rank 0 none in its own (a checkpoint
    folder that is not shared between nodes): both ranks raise, naming it, instead of entering
    different collectives (the no-checkpoint rank's validation, the other's start check)."""
    root, _, _ = dataset
    cfg = {"steps": 2, "schedule": "constant", "checkpoint_every": 1, "eval_every": 1}
    finish(run_worker(root, "ck1", "first.safetensors", cfg))
    proc = run_worker(
        root, "ck{rank}", "two.safetensors", {**cfg, "steps": 4}, nproc=2, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the ranks hung instead of refusing the run:\n{output[-3000:]}")
    assert proc.returncode != 0, output[-3000:]
    refusal = "rank 1 resumes from step 2 but rank 0 found no checkpoint"
    assert output.count(refusal) >= 2, output[-3000:]  # raised on both ranks
    assert "must be on a filesystem shared by every node" in output
    assert not (root / "two.safetensors").exists()


def test_what_the_ranks_disagree_on_is_named():
    ck = Path("data/checkpoint")
    assert start_disagreement([5, 5, 5], [1, 1, 1], [7, 7, 7], ck) is None
    said = start_disagreement([0, 50, 0, 50], [1, 1, 1, 1], [7, 7, 7, 7], ck)
    assert said.startswith("ranks 1, 3 resume from step 50 but ranks 0, 2 found no checkpoint: ")
    assert "(data/checkpoint) must be on a filesystem shared" in said
    said = start_disagreement([0, 0], [1, 2], [7, 8], ck)
    assert "rank 0 and rank 1 run different training code" in said
    assert "rank 0 and rank 1 train different runs" in said and "step" not in said


def test_ranks_draw_different_dropout_masks_and_rank_0_those_of_one_process(dataset):
    """lm.dropout > 0: the same rows on two ranks get different masks (each rank's slice has its
    own), the same rank the same masks; rank 0 keeps the seed of a one-process run."""
    root, ids, card = dataset
    b = make(root, ids).batch(np.arange(8))
    torch.manual_seed(0)
    model = LM(
        LMConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=card, text_dim=8, dropout=0.3)
    ).train()

    def ce(rank: int) -> torch.Tensor:
        torch.manual_seed(dropout_seed(seed=2, step=7, rank=rank))
        return model(b.codes, b.cond, b.cond_mask)[1]

    assert torch.equal(ce(0), ce(0)) and torch.equal(ce(1), ce(1))
    assert not torch.allclose(ce(0), ce(1))
    assert dropout_seed(2, 7, 0) == 2 * 1_000_003 + 7  # the seed one process always used


def test_the_process_group_waits_train_dist_timeout_min(monkeypatch):
    """Under torchrun the process group is made with ``train.dist_timeout_min``, not the
    backend's default (NCCL: 10 min) that rank 0 writing a large checkpoint can outlast."""
    import torch.distributed as dist

    made = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: made.update(kw))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    threads, level = torch.get_num_threads(), logging.getLogger("musicgen").level
    try:
        with distributed("cpu", TrainConfig(dist_timeout_min=90).dist_timeout_min) as (ranks, _):
            assert ranks.rank == 1 and ranks.world == 2
    finally:
        torch.set_num_threads(threads)
        logging.getLogger("musicgen").setLevel(level)  # rank > 0 logs warnings only
    assert made["timeout"].total_seconds() == 90 * 60
    assert "dist_timeout_min" not in run_identity(TrainConfig())  # a layout knob: resumes


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(dataset):
    root, _, _ = dataset
    cfg = {"steps": 20, "checkpoint_every": 5, "eval_every": 10}
    finish(run_worker(root, "whole", "whole.safetensors", cfg))
    slow = {**cfg, "slow_step_s": 0.1}
    proc = run_worker(root, "killed", "killed.safetensors", slow, start_new_session=True)
    meta = root / "killed/meta.json"
    deadline = time.time() + 120
    while not (meta.exists() and json.loads(meta.read_text())["step"] >= 5):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not json.loads(meta.read_text()).get("complete")
    assert not (root / "killed.safetensors").exists()
    finish(run_worker(root, "killed", "killed.safetensors", cfg))
    assert weights_equal(
        load_file(root / "whole.safetensors"), load_file(root / "killed.safetensors")
    )


def main(root: Path, ckpt: Path, out: Path, overrides: dict) -> None:
    """Trains on the fixture's dataset in ``root``; saves ``model.*`` and ``ema.*`` to ``out`` (rank
    0) or ``out.rank<N>.safetensors``."""
    import musicgen.train as tr

    slow = overrides.pop("slow_step_s", 0.0)
    if slow:  # a step that lasts long enough for a kill to land mid-run
        real_get_lr = tr.get_lr
        tr.get_lr = lambda step, cfg: time.sleep(slow) or real_get_lr(step, cfg)
    ckpt = Path(str(ckpt).format(rank=os.environ.get("RANK", "0")))  # "{rank}": one per rank
    ids, _ = load_tokens(root / "tokens")
    data = make(root, ids)
    model = lm(32)
    cfg = config(**overrides)
    result = train(model, data, data, cfg, ckpt, config_hash(run_identity(cfg)), progress=False)
    save_rank_result(out, {k: v.cpu() for k, v in model.state_dict().items()}, result["ema"])


def save_rank_result(out: Path, weights: dict, ema: dict) -> None:
    """A worker's weights and EMA in ``out`` (rank 0) or ``out``'s ``.rankN`` sibling, so that a
    test can check that every rank holds the same."""
    tensors = {f"model.{k}": v for k, v in weights.items()} | {
        f"ema.{k}": v for k, v in ema.items()
    }
    if not is_main_process():
        out = out.with_suffix(f".rank{os.environ['RANK']}.safetensors")
    save_file(tensors, str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]))
