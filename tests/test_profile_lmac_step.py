"""benchmarks/profile_lmac_step.py: operators grouped, their FLOP rates and the table."""

from pathlib import Path

import pytest
import torch
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
profile_lmac_step = load_script("_profile_lmac_step", ROOT / "benchmarks" / "profile_lmac_step.py")


def test_operators_are_grouped_with_their_flop_rates():
    seconds = {
        "aten::mm": 3.0, "aten::addmm_": 1.0,  # 4 s of matrix products
        "aten::mkldnn_convolution": 1.5, "aten::convolution_backward": 0.5,
        "aten::col2im": 0.4, "aten::im2col": 0.6,
        "aten::native_batch_norm": 0.25,
        "aten::add_": 0.5, "aten::copy_": 0.25,  # the rest
        "Optimizer.step#Adam.step": 9.0,  # not an operator: left out of "other"
    }  # fmt: skip
    flops = {"mm": 0.9e12, "addmm_": 0.3e12, "convolution": 0.2e12, "convolution_backward": 0.2e12}
    rows = {r["group"]: r for r in profile_lmac_step.breakdown(seconds, flops, 10.0, 0.4)}
    products = rows["matrix products"]
    assert products["seconds"] == 4.0 and products["share_of_step"] == 0.4
    assert products["tflop"] == pytest.approx(1.2)
    assert products["tflops_per_s"] == pytest.approx(0.3)
    assert products["fraction_of_matmul_rate"] == pytest.approx(0.75)
    convolutions = rows["convolutions (oneDNN)"]
    assert convolutions["seconds"] == 2.0
    assert convolutions["tflops_per_s"] == pytest.approx(0.2)
    assert rows["fold / unfold"]["seconds"] == pytest.approx(1.0)
    assert rows["fold / unfold"]["tflop"] is None  # no FLOPs counted: no rate
    assert rows["batch norm"]["seconds"] == 0.25
    assert rows["other aten operators"]["seconds"] == 0.75
    text = profile_lmac_step.markdown(
        {
            "batch_size": 16, "threads": 2, "profiled_step_seconds": 10.0, "step_tflop": 1.6,
            "matmul_tflops_per_s": 0.4, "groups": list(rows.values()),
        }
    )  # fmt: skip
    assert "| matrix products | 4.00 | 40% | 1.20 | 0.300 | 75% |" in text
    assert "| fold / unfold | 1.00 | 10% |  |  |  |" in text
    assert text.startswith("Batch 16, 2 threads: the profiled step takes 10.0 s (1.60 TFLOP)")


def test_flops_are_counted_per_operator_with_the_in_place_addmm():
    """The FLOP counter's table lacks ``addmm_`` (our decoder's weight gradients): added."""
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    acc = torch.zeros(8, 4)

    def step():
        torch.mm(a, b)
        acc.addmm_(a, b)

    counts = profile_lmac_step.flops_by_op(step)
    assert counts == {"mm": 2 * 8 * 16 * 4, "addmm_": 2 * 8 * 16 * 4}
