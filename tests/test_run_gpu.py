"""benchmarks/run_gpu.sh's flow, dry-run on the CPU with small models (``DEVICE=cpu
CONFIG=tiny``), its time budget, and the ``--device_tests_only`` selection it runs on a GPU."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"


def _run(out: Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DEVICE": "cpu", "CONFIG": "tiny", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=600,
    )


def test_dry_run_writes_every_row_of_the_table(tmp_path):
    proc = _run(tmp_path / "gpu", SKIP_TESTS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "gpu"
    assert sorted(p.name for p in out.glob("*.json")) == [
        "amt_bf16_b2.json",
        "amt_fp32_b2.json",
        "lmac_bf16_b2.json",
        "lmac_fp32_b2.json",
    ]
    assert not (out / "skipped.txt").exists() and not (out / "failed.txt").exists()
    rows = [line for line in (out / "table.md").read_text().splitlines() if "[tiny]" in line]
    for precision in ("bf16", "fp32"):
        for what in ("L-MAC [tiny] train (ours)", "L-MAC [tiny] eval (ours)"):
            assert any(r.startswith(f"| {what} | {precision} | 2 |") for r in rows), rows
        assert sum(r.startswith("| AMT") and f"| {precision} | 2 |" in r for r in rows) == 2
    # every timed row has a positive time
    for r in rows:
        assert float(r.split("|")[4]) > 0


def test_no_budget_skips_every_step_and_says_so(tmp_path):
    out = tmp_path / "gpu"
    proc = _run(out, BUDGET_S="0")
    skipped = (out / "skipped.txt").read_text()
    for name in ("L-MAC bf16 batch 2", "L-MAC fp32 batch 2", "AMT bf16 batch 2", "tests on cpu"):
        assert f"== {name}" in skipped
    assert not list(out.glob("*.json"))
    # nothing ran: the table step fails with the reason rather than writing an empty table
    assert proc.returncode != 0
    assert "no bench_lmac.py / bench_amt.py JSON" in proc.stderr


def test_unknown_config_is_refused(tmp_path):
    proc = _run(tmp_path / "gpu", CONFIG="huge")
    assert proc.returncode == 2
    assert "CONFIG must be paper or tiny" in proc.stderr


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_refused_before_any_step(tmp_path):
    out = tmp_path / "gpu"
    proc = _run(out, DEVICE="cuda")
    assert proc.returncode != 0
    assert "run_gpu.sh needs a CUDA GPU" in proc.stderr
    assert not list(out.glob("*.json"))


def test_device_tests_only_keeps_exactly_the_tests_that_take_device():
    target = "tests/test_cnn14.py"

    def collected(*flags):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--co",
                "-q",
                "-p",
                "no:cacheprovider",
                target,
                *flags,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stdout[-2000:]
        return {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}

    every, selected = collected(), collected("--device_tests_only")
    module = load_script("cnn14_tests_for_selection", REPO / target)
    takes_device = {
        f"{target}::{name}"
        for name, fn in vars(module).items()
        if name.startswith("test_") and "device" in inspect.signature(fn).parameters
    }
    assert takes_device and takes_device < every
    assert selected == takes_device


def test_bench_lmac_refuses_the_published_step_at_the_tiny_config(tmp_path):
    bench = load_script("bench_lmac_tiny", REPO / "benchmarks" / "bench_lmac.py")
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path / "x.json"), "--config", "tiny"])
    assert not (tmp_path / "x.json").exists()
