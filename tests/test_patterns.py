import pytest
import torch

from musicgen.patterns import PATTERNS, make_pattern


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("n_frames", [1, 7])
def test_build_then_revert_is_identity(name, n_frames):
    codes = torch.randint(0, 2048, (3, 4, n_frames))
    pattern = make_pattern(name, 4, n_frames)
    seq = pattern.build(codes, special=2048)
    assert torch.equal(pattern.revert(seq), codes)
    logits = torch.randn(3, 4, pattern.n_steps, 5)
    back = pattern.revert(logits)
    assert back.shape == (3, 4, n_frames, 5)
    inv = pattern.inverse()
    assert torch.equal(back[:, 2, 0], logits[:, 2, inv[2, 0]])


@pytest.mark.parametrize("name", PATTERNS)
def test_every_code_appears_once_and_empty_slots_are_special(name):
    pattern = make_pattern(name, 4, 6)
    counts = torch.zeros(4, 6, dtype=torch.long)
    for k in range(4):
        for t in pattern.layout[k][pattern.layout[k] >= 0]:
            counts[k, t] += 1
    assert torch.all(counts == 1)
    seq = pattern.build(torch.zeros(1, 4, 6, dtype=torch.long), special=99)
    assert torch.equal(seq[0] == 99, ~pattern.mask)


def test_delay_layout_matches_musicgen():
    pattern = make_pattern("delay", 4, 3, delays=[0, 1, 2, 3])
    assert pattern.n_steps == 6
    assert pattern.layout.tolist() == [
        [0, 1, 2, -1, -1, -1],
        [-1, 0, 1, 2, -1, -1],
        [-1, -1, 0, 1, 2, -1],
        [-1, -1, -1, 0, 1, 2],
    ]


def test_step_counts():
    assert make_pattern("parallel", 4, 10).n_steps == 10
    assert make_pattern("unroll", 4, 10).n_steps == 40
    assert make_pattern("coarse_first", 4, 10).n_steps == 20
    assert make_pattern("delay", 4, 10, delays=[0, 2, 4, 6]).n_steps == 16


def test_within_a_step_codes_come_from_frames_already_causal():
    # In unroll, codebook k of frame t comes after codebooks < k of the same frame.
    inv = make_pattern("unroll", 4, 5).inverse()
    assert torch.all(inv[1:] > inv[:-1])


def test_bad_pattern_arguments():
    with pytest.raises(ValueError, match="unknown pattern"):
        make_pattern("zigzag", 4, 5)
    with pytest.raises(ValueError, match="delays"):
        make_pattern("delay", 4, 5, delays=[0, 1])
