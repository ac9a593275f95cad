"""The speed aims that benchmarks/bench_lm.py checks at the end of a run (its AIMS)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_lm import Row, check_aims  # noqa: E402

# Issue 19's rows as filed (AVX2 Zen 3, before the plans; floor = ours / "ours / floor")
ZEN3 = [
    Row("seed1", 1, "fp32", 21.6, 49.2, 21.6 / 1.30),
    Row("seed1", 1, "bf16", 12.8, 49.2, 12.8 / 1.52),
    Row("seed1", 4, "fp32", 39.3, 69.9, 39.3 / 2.27),
    Row("seed1", 16, "fp32", 147.1, 142.7, 147.1 / 2.42),
    Row("seed1", 16, "bf16", 81.5, 142.7, 81.5 / 1.34),
]
# README's Zen 5 rows (after the plans), with torch+BLAS
ZEN5 = [
    Row("seed1", 1, "fp32", 10.3, 37.4, 9.1, 32.1),
    Row("seed1", 1, "bf16", 6.3, 37.4, 4.6, 32.1),
    Row("seed1", 16, "fp32", 30.8, 98.6, 21.2, 89.2),
    Row("small", 4, "bf16", 30.6, 162.5, 24.1, 156.4),
]

# README's Zen 4 rows (a later session, with the plans), with torch+BLAS
ZEN4 = [
    Row("seed1", 1, "fp32", 14.3, 50.8, 12.1, 42.7),
    Row("seed1", 1, "bf16", 8.9, 50.8, 6.1, 42.7),
    Row("seed1", 4, "fp32", 18.7, 60.5, 12.6, 53.1),
    Row("seed1", 4, "bf16", 17.3, 60.5, 12.2, 53.1),
    Row("seed1", 16, "fp32", 60.6, 124.5, 49.2, 105.6),
    Row("seed1", 16, "bf16", 64.2, 124.5, 49.2, 105.6),
    Row("small", 1, "fp32", 50.5, 207.6, 47.1, 179.0),
    Row("small", 1, "bf16", 30.1, 207.6, 23.8, 179.0),
    Row("small", 4, "fp32", 74.1, 230.3, 48.6, 224.0),
    Row("small", 4, "bf16", 66.5, 230.3, 48.5, 224.0),
    Row("small", 16, "fp32", 235.2, 452.5, 196.4, 437.2),
    Row("small", 16, "bf16", 252.3, 452.5, 196.4, 437.2),
]


def test_the_rows_filed_in_issue_19_miss_the_aims_it_names():
    lines = "\n".join(check_aims(ZEN3))
    assert "fp32 at batch 1: ours <= 1.15x floor: 0 of 1 rows, MISSED by seed1 b1 fp32" in lines
    assert "HF fp32 / ours >= 2.0x: 0 of 3 rows, MISSED by seed1 b4 fp32, seed1 b16 fp32, " in lines
    assert "ours <= 1.5x floor: 1 of 3 rows, MISSED by seed1 b4 fp32, seed1 b16 fp32" in lines
    assert "bf16 at batch 1: HF fp32 / ours >= 2.0x: 1 of 1 rows, met" in lines
    assert "torch+BLAS" not in lines  # not measured then: the aim has no rows


def test_rows_that_meet_every_aim_say_so_and_a_slower_than_blas_row_is_named():
    lines = check_aims(ZEN5)
    assert len(lines) == 5 and all(line.endswith(", met") for line in lines)
    slow = [*ZEN5, Row("small", 16, "fp32", 120.0, 357.5, 84.6, 110.0)]
    assert check_aims(slow)[-1].endswith("4 of 5 rows, MISSED by small b16 fp32")


def test_an_aim_is_checked_only_on_rows_that_measured_what_it_compares():
    only_b4 = [Row("small", 4, "int8", 1.0, 3.0), Row("small", 4, "fp32", 1.0, 1.5, 0.9)]
    assert check_aims(only_b4) == [
        "  batch 4 and more: HF fp32 / ours >= 2.0x: 1 of 2 rows, MISSED by small b4 fp32",
        "  batch 4 and more: ours <= 1.5x floor: 1 of 1 rows, met",
    ]


def test_rows_of_other_presets_are_not_held_to_the_aims():
    tiny = Row("tiny", 1, "fp32", 0.7, 2.1, 0.2, 1.1)  # overhead-bound: 3.8x its floor
    assert check_aims([tiny]) == ["  none: the aims are stated for seed1 and small"]
    assert check_aims([tiny, *ZEN5]) == check_aims(ZEN5)


def test_the_zen4_rows_give_the_verdict_that_run_printed():
    assert check_aims(ZEN4) == [
        "  fp32 at batch 1: ours <= 1.15x floor: 1 of 2 rows, MISSED by seed1 b1 fp32",
        "  batch 4 and more: HF fp32 / ours >= 2.0x: 5 of 8 rows, MISSED by seed1 b16 bf16, "
        "small b16 fp32, small b16 bf16",
        "  batch 4 and more: ours <= 1.5x floor: 7 of 8 rows, MISSED by small b4 fp32",
        "  bf16 at batch 1: HF fp32 / ours >= 2.0x: 2 of 2 rows, met",
        "  every row: ours no slower than torch+BLAS: 12 of 12 rows, met",
    ]
