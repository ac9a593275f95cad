"""LoRA adapters through peft (``train.lora``, :mod:`musicgen.lora`): the step-0 model is the base,
only the adapters train, the stage writes the merged LM and an adapter that rebuilds it, resume and
DDP cover it.

Run as a script (``python tests/test_lora.py ROOT CKPT OUT``, alone or under torchrun), it trains
a LoRA on ``test_train``'s dataset and saves the EMA adapters (rank 0).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from interrupt import killed_after_first_checkpoint
from safetensors.torch import load_file, save_file
from test_finetune import inputs, run_stage, save_hf_musicgen, weights  # noqa: F401 - a fixture
from test_train import config, dataset, lm, make  # noqa: F401 - a fixture

from musicgen import lora as L
from musicgen.convert import convert_hf
from musicgen.data.store import load_tokens
from musicgen.lm import load_lm
from musicgen.params import config_hash
from musicgen.train import (
    forward_backward,
    is_main_process,
    make_optimizer,
    optimizer_update,
    run_identity,
    train,
)

SETTINGS = L.LoraSettings(r=4, alpha=8.0, targets=list(L.ROLES))


def adapted(card: int, settings: L.LoraSettings = SETTINGS):
    """``test_train``'s LM with adapters (A seeded, B zero) and the peft tuner holding it."""
    model = lm(card)
    torch.manual_seed(1)
    return model, L.attach(model, settings)


def batch(card: int, n: int = 3):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, card, (n, 4, 7), generator=g)
    return codes, torch.randn(n, 5, 8, generator=g), torch.ones(n, 5, dtype=torch.bool)


def test_at_step_zero_the_adapted_model_is_the_base_model():
    base = lm(32)
    model, _ = adapted(32)
    assert any(name.endswith("lora_B.default.weight") for name, _ in model.named_parameters())
    codes, cond, mask = batch(32)
    with torch.no_grad():
        expected, ce = base(codes, cond, mask)
        logits, ce_adapted = model(codes, cond, mask)
    assert torch.equal(logits, expected) and torch.equal(ce_adapted, ce)


def test_every_role_maps_to_modules_of_the_lm():
    model, _ = adapted(32)
    names = [n for n, _ in model.named_modules() if n.endswith(".lora_A")]
    for role, pattern in L.ROLES.items():
        assert any(re.fullmatch(pattern, n[: -len(".lora_A")]) for n in names), role
    # 2 layers x (4 self + 4 cross + 2 ffn) + text_proj + 4 heads
    assert len(names) == 2 * 10 + 1 + 4


def test_only_the_adapters_get_gradients_and_optimizer_state():
    model, _ = adapted(32)
    adapters = {n for n, _ in model.named_parameters() if ".lora_" in n}
    counted = sum(p.numel() for n, p in model.named_parameters() if n in adapters)
    assert L.trainable_parameters(model) == counted > 0
    optimizer = make_optimizer(model, config())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward_backward(model, *batch(32), None, scaler, 1.0)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == adapters
    optimizer_update(model, optimizer, scaler, 1.0)
    state = optimizer.state_dict()["state"]
    moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in state.values())
    assert len(state) == len(adapters) and moments == 2 * counted


def test_bad_settings_are_refused():
    for bad in ({"r": -1}, {"r": 4, "alpha": 0}, {"r": 4, "targets": ["mlp"]}, {"dropout": 1.0}):
        with pytest.raises(ValueError, match="train.lora"):
            L.LoraSettings.from_params(bad)
    assert L.LoraSettings.from_params(None).identity() is None  # off: not in the resume key


def test_the_stage_writes_the_merged_lm_and_an_adapter_that_rebuilds_it(inputs):  # noqa: F811
    root = inputs["root"]
    hf = save_hf_musicgen(root / "hf")
    lora = {"r": 4, "alpha": 8.0}
    metrics = run_stage(inputs, "lm", "ckpt", init_from=str(hf), lora=lora)
    plain = run_stage(inputs, "plain", "plain-ckpt", init_from=str(hf), steps=0)
    assert metrics["val_ce_init"] == plain["val_ce_init"]  # B = 0: the base model's CE
    convert_hf(str(hf), root / "converted")
    base = load_lm(root / "converted")
    merged, start = weights(root / "lm"), base.state_dict()
    assert merged.keys() == start.keys()  # a plain LM: what generate and evaluate read
    changed = {k for k in start if not torch.equal(merged[k], start[k])}
    assert changed and all(k.startswith("layers.") for k in changed)  # the targets alone
    adapter = root / "lm" / L.ADAPTER
    assert json.loads((adapter / L.BASE).read_text())["init_from"] == str(hf)
    assert metrics["lora_parameters"] == sum(
        v.numel() for v in load_file(adapter / L.WEIGHTS).values()
    )
    rebuilt = L.load_adapted(base, adapter).state_dict()
    assert all(torch.allclose(rebuilt[k], merged[k], atol=1e-7) for k in merged)
    assert "LoRA r 4" in L.adapter_summary(adapter, metrics["parameters"])
    # the checkpoint holds the adapters and their EMA, not the frozen base
    ckpt = load_file(root / "ckpt" / "state.safetensors")
    assert ckpt_names(ckpt, "model.") == ckpt_names(ckpt, "ema.")
    assert all(".lora_" in k for k in ckpt_names(ckpt, "model."))


def ckpt_names(tensors: dict, prefix: str) -> set[str]:
    return {k[len(prefix) :] for k in tensors if k.startswith(prefix)}


def test_a_killed_lora_run_resumes_and_changing_r_starts_over(inputs, monkeypatch, caplog):  # noqa: F811
    root = inputs["root"]
    hf = str(save_hf_musicgen(root / "hf"))
    lora = {"r": 4, "alpha": 8.0}
    with killed_after_first_checkpoint(monkeypatch):
        run_stage(inputs, "killed", "ckpt", init_from=hf, lora=lora)
    with caplog.at_level(logging.INFO):
        run_stage(inputs, "rerun", "ckpt", init_from=hf, lora=lora)
    assert "resuming from step 4" in caplog.text
    run_stage(inputs, "fresh", "fresh-ckpt", init_from=hf, lora=lora)
    rerun, fresh = weights(root / "rerun"), weights(root / "fresh")
    assert all(torch.equal(rerun[k], fresh[k]) for k in fresh)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_stage(inputs, "other", "ckpt", init_from=hf, lora={**lora, "r": 2})
    assert "another run (lora changed)" in caplog.text


def run_worker(root: Path, out: str, nproc: int = 1) -> None:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = [*launcher, __file__, str(root), str(root / f"ckpt{nproc}"), str(root / out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def test_ddp_with_lora_on_two_processes_equals_one_process(dataset):  # noqa: F811
    """2 gloo ranks with half of every global batch each train the adapters one process does,
    within 1e-5 (the EMA adapters after 6 steps)."""
    root, _, card = dataset
    run_worker(root, "one.safetensors")
    run_worker(root, "two.safetensors", nproc=2)
    one, two = load_file(root / "one.safetensors"), load_file(root / "two.safetensors")
    assert one.keys() == two.keys() and all(".lora_" in k for k in one)
    assert any(k.endswith("lora_B.default.weight") and v.abs().max() > 1e-3 for k, v in one.items())
    assert all(torch.allclose(one[k], two[k], atol=1e-5, rtol=0) for k in one)


def main(root: Path, ckpt: Path, out: Path) -> None:
    """Trains the LoRA of :func:`adapted` on the dataset in ``root``; rank 0 saves its EMA."""
    ids, _ = load_tokens(root / "tokens")
    data = make(root, ids)
    model, _ = adapted(32)
    cfg = config(steps=6, batch_size=8, grad_accum=2, cfg_dropout_per_sample=True, lr=1e-2)
    run = config_hash(run_identity(cfg))
    result = train(model, data, data, cfg, ckpt, run, progress=False)
    if is_main_process():
        save_file({k: v.contiguous() for k, v in result["ema"].items()}, str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
