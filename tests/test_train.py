import numpy as np
import pytest
import torch

from musicgen.data.store import CodesAndText, save_text, save_tokens
from musicgen.lm import LM, LMConfig
from musicgen.train import TrainConfig, batch_rows, get_lr, token_entropy, train, validation_ce


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


def interrupt_after_first_checkpoint(monkeypatch, data, card, ckpt_dir, run_hash):
    """Runs training until its first checkpoint is written, then kills it."""
    import musicgen.train as tr

    real_save = tr.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tr, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(lm(card), data, data, config(steps=20), ckpt_dir, run_hash, progress=False)


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
    assert full["history"] == resumed["history"]


def test_checkpoint_of_another_config_is_not_resumed(dataset, monkeypatch):
    root, ids, card = dataset
    data = make(root, ids)
    interrupt_after_first_checkpoint(monkeypatch, data, card, root / "c", "old")
    out = train(lm(card), data, data, config(steps=20), root / "c", "new", progress=False)
    assert out["history"][0]["step"] == 0  # started over, with its own step-0 evaluation


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
