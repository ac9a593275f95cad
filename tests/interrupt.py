"""Killing a training run right after its first checkpoint, for resume tests."""

from __future__ import annotations

import contextlib

import pytest


@contextlib.contextmanager
def killed_after_first_checkpoint(monkeypatch):
    """Inside the block, training stops with KeyboardInterrupt once its first checkpoint is
    written (the block must raise it)."""
    import musicgen.train as tr

    real_save = tr.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tr, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            yield
