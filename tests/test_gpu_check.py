"""scripts/gpu_check.py in its CPU mode: every check runs, is named in the table, and passes.

On the CPU the same functions run as on a GPU (the static step eagerly, autocast in bf16, DDP on
gloo), so this keeps the GPU check itself working between GPU runs (README, "Checking a GPU
machine"). A few minutes on 2 cores: it runs the small pipeline through DVC once more.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402
from gpu_check import CHECKS, Row, table  # noqa: E402


@pytest.mark.slow
def test_the_cpu_mode_runs_and_passes_every_check(tmp_path):
    report = tmp_path / "gpu_check.json"
    out = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-5000:]
    result = json.loads(report.read_text())
    assert result["passed"] and result["device"] == "cpu"
    assert {row["check"] for row in result["checks"]} == set(CHECKS)
    assert all(row["status"] == "PASS" for row in result["checks"]), result["checks"]
    for row in result["checks"]:  # each check named in the printed table
        assert f"{row['check']}. {row['name']}" in out.stdout
    assert out.stdout.startswith(f"gpu_check on {result['device_name']}")
    stages = {
        r["name"].removeprefix("peak memory: ") for r in result["checks"] if r["check"] == "f"
    }
    assert {"tokenize", "encode_text", "train", "generate", "evaluate"} <= stages


def test_a_failing_check_is_a_fail_row_and_a_nonzero_exit(tmp_path, monkeypatch, capsys):
    """A check that raises is a FAIL row with its error; the next check still runs; exit 1."""

    def broken(ctx):
        raise RuntimeError("no graph captured")

    def fine(ctx):
        return [Row("y", "passes", "measured", str(ctx.device), True)]

    monkeypatch.setattr(gpu_check, "CHECKS", {"x": ("raises", broken), "y": ("passes", fine)})
    report = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--only", "x,y", "--json", str(report)]) == 1
    rows = json.loads(report.read_text())["checks"]
    assert [(r["check"], r["status"]) for r in rows] == [("x", "FAIL"), ("y", "PASS")]
    assert rows[0]["value"] == "RuntimeError: no graph captured" and rows[1]["value"] == "cpu"
    assert "x. raises" in capsys.readouterr().out


def test_the_table_names_each_row():
    rows = [Row("b", "static step vs eager step, cpu", "greedy codes", "equal", True)]
    rows.append(Row("g", "bench_lm vs Hugging Face", "error", "RuntimeError: no line", False))
    text = table("gpu_check on some CPU", rows).splitlines()
    assert text[0] == "gpu_check on some CPU"
    assert text[2].startswith("b. static step vs eager step, cpu") and text[2].endswith("PASS")
    assert text[3].startswith("g. bench_lm vs Hugging Face") and text[3].endswith("FAIL")
