"""Tests of audio_interpretability.metrics: hand-computed values, edge cases, references."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from audio_interpretability.metrics import (
    MASK_EPS,
    MaskDependence,
    MetricAccumulator,
    accuracy,
    average_drop,
    average_gain,
    average_increase,
    complexity,
    compute_faithfulness_metrics,
    faithfulness,
    input_fidelity,
    localization_metrics,
    masked_in_drop,
    profile_correlation,
    random_mask_like,
    sparseness,
    swap_partners,
)

KEYS = ["AD", "AG", "AI", "COMP", "FF", "SPS", "accuracy", "fid_in", "in_drop"]


def _logits(probs, device) -> torch.Tensor:
    """Logits whose softmax is exactly the given probabilities (log p)."""
    return torch.log(torch.tensor(probs, dtype=torch.float32, device=device))


# Three samples, three classes. Columns: class 0, 1, 2.
P = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]]  # decided c = 0, 1, 2
P_IN = [[0.8, 0.1, 0.1], [0.4, 0.4, 0.2], [0.1, 0.6, 0.3]]
P_OUT = [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]
LABELS = [0, 2, 2]
# Hand-computed per sample:
#   AI: 0.8 > 0.6 -> 100; 0.4 < 0.5 -> 0; 0.3 < 0.5 -> 0
#   AD: 0; 100 * 0.1 / 0.5 = 20; 100 * 0.2 / 0.5 = 40
#   AG: 100 * 0.2 / 0.4 = 50; 0; 0
#   FF: 0.6 - 0.2 = 0.4; 0.5 - 0.1 = 0.4; 0.5 - 0.4 = 0.1
#   fid_in: argmax p_in = 0 (=c); argmax [0.4, 0.4, 0.2] = 0 (first max) != 1; 1 != 2
#   in_drop: 0.6 - 0.8 = -0.2; 0.5 - 0.4 = 0.1; 0.5 - 0.3 = 0.2
#   accuracy: pred (0, 1, 2) vs labels (0, 2, 2) -> 1, 0, 1
EXPECTED = {
    "AI": [100.0, 0.0, 0.0],
    "AD": [0.0, 20.0, 40.0],
    "AG": [50.0, 0.0, 0.0],
    "FF": [0.4, 0.4, 0.1],
    "fid_in": [1.0, 0.0, 0.0],
    "in_drop": [-0.2, 0.1, 0.2],
    "accuracy": [1.0, 0.0, 1.0],
}


def _close(actual: torch.Tensor, expected, atol=1e-5):
    expected = torch.tensor(expected, dtype=torch.float32)
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu(), expected, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------
# Faithfulness metrics on hand-computed values
# ------------------------------------------------------------------------------------------
def test_faithfulness_metrics_hand_computed(device):
    logits, logits_in, logits_out = (_logits(p, device) for p in (P, P_IN, P_OUT))
    mask = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]] * 3, device=device)
    labels = torch.tensor(LABELS, device=device)
    out = compute_faithfulness_metrics(logits, logits_in, logits_out, mask, labels)
    assert sorted(out) == KEYS
    for key, expected in EXPECTED.items():
        _close(out[key], expected)
        assert out[key].device.type == device.type
    # SPS of [0, 0, 0, 1] (+eps): sum_k (2k - 5) a_k / (4 sum a) = 3 / 4; COMP ~ 0
    _close(out["SPS"], [0.75] * 3, atol=1e-5)
    _close(out["COMP"], [0.0] * 3, atol=1e-4)


def test_individual_functions_match_hand_values(device):
    p, p_in, p_out = (torch.tensor(x, device=device) for x in (P, P_IN, P_OUT))
    _close(average_increase(p, p_in), EXPECTED["AI"])
    _close(average_drop(p, p_in), EXPECTED["AD"])
    _close(average_gain(p, p_in), EXPECTED["AG"])
    _close(faithfulness(p, p_out), EXPECTED["FF"])
    _close(input_fidelity(p, p_in), EXPECTED["fid_in"])
    _close(masked_in_drop(p, p_in), EXPECTED["in_drop"])
    _close(accuracy(p, torch.tensor([[0], [2], [2]], device=device)), EXPECTED["accuracy"])
    # An explicit class instead of the decision: read class 1 everywhere.
    pred = torch.tensor([1, 1, 1], device=device)
    # AD at class 1: max(0, 0.3 - 0.1) / 0.3 = 66.67; max(0, 0.5 - 0.4) / 0.5 = 20; 0
    _close(average_drop(p, p_in, pred), [200.0 / 3.0, 20.0, 0.0], atol=1e-4)


def test_argmax_tie_goes_to_first_class(device):
    # p ties between classes 0 and 1: c = 0 (torch.argmax returns the first maximum).
    logits = _logits([[0.4, 0.4, 0.2]], device)
    logits_in = _logits([[0.3, 0.6, 0.1]], device)
    out = compute_faithfulness_metrics(logits, logits_in, logits, torch.ones(1, 2, 2))
    # Read at class 0: 0.3 < 0.4 -> AI 0, AD = 100 * 0.1 / 0.4 = 25 (class 1 would give AI 100).
    _close(out["AI"], [0.0])
    _close(out["AD"], [25.0], atol=1e-4)
    _close(out["fid_in"], [0.0])
    _close(out["FF"], [0.0])


def test_saturated_probability_gives_finite_values(device):
    # softmax([100, 0, 0]) is exactly 1.0 in float32: AG has no headroom -> defined as 0.
    logits = torch.tensor([[100.0, 0.0, 0.0], [100.0, 0.0, 0.0]], device=device)
    p = logits.softmax(-1)
    assert p[0, 0].item() == 1.0
    logits_in = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0]], device=device)
    out = compute_faithfulness_metrics(logits, logits_in, logits_in, torch.zeros(2, 3, 4))
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    _close(out["AG"], [0.0, 0.0])
    _close(out["AI"], [0.0, 0.0])
    _close(out["AD"], [0.0, 100.0 * (1 - 1 / 3)], atol=1e-4)
    _close(out["in_drop"], [0.0, 2 / 3], atol=1e-6)


def test_probability_functions_reject_logits_and_bad_shapes(device):
    logits = torch.tensor([[2.0, -1.0]], device=device)
    with pytest.raises(ValueError, match="softmax"):
        average_drop(logits, logits)
    with pytest.raises(ValueError, match="same shape"):
        average_gain(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match="batch size"):
        compute_faithfulness_metrics(
            logits, logits, logits, torch.ones(2, 3, 3, device=device), None
        )
    with pytest.raises(ValueError, match="one label per sample"):
        accuracy(logits, torch.tensor([0, 1]))


def test_batched_equals_per_item(device):
    g = torch.Generator().manual_seed(1)
    logits, logits_in, logits_out = (3 * torch.randn(5, 7, generator=g) for _ in range(3))
    mask = torch.rand(5, 11, 13, generator=g)
    labels = torch.randint(0, 7, (5,), generator=g)
    args = [t.to(device) for t in (logits, logits_in, logits_out, mask, labels)]
    batched = compute_faithfulness_metrics(*args)
    for i in range(5):
        single = compute_faithfulness_metrics(*(t[i : i + 1] for t in args))
        for key in KEYS:
            torch.testing.assert_close(single[key], batched[key][i : i + 1], atol=1e-6, rtol=0)
    loc_b = localization_metrics(mask, (mask > 0.3).float().flip(1), mask + 1)
    for i in range(5):
        loc_i = localization_metrics(
            mask[i : i + 1], (mask[i : i + 1] > 0.3).float().flip(1), mask[i : i + 1] + 1
        )
        for key, value in loc_i.items():
            torch.testing.assert_close(value, loc_b[key][i : i + 1], atol=1e-6, rtol=0)


def test_bf16_inputs_are_computed_in_float32(device):
    g = torch.Generator().manual_seed(2)
    logits, logits_in, logits_out = (
        (2 * torch.randn(4, 6, generator=g)).to(device, torch.bfloat16) for _ in range(3)
    )
    mask = torch.rand(4, 9, 10, generator=g).to(device, torch.bfloat16)
    out_bf16 = compute_faithfulness_metrics(logits, logits_in, logits_out, mask)
    out_f32 = compute_faithfulness_metrics(
        logits.float(), logits_in.float(), logits_out.float(), mask.float()
    )
    assert set(out_bf16) == set(KEYS) - {"accuracy"}
    for key, value in out_bf16.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, out_f32[key], atol=1e-6, rtol=0)
    loc = localization_metrics(mask, (mask > 0.5).to(torch.bfloat16), mask + 1)
    assert all(v.dtype == torch.float32 for v in loc.values())


# ------------------------------------------------------------------------------------------
# SPS and COMP
# ------------------------------------------------------------------------------------------
def test_sparseness_and_complexity_hand_computed(device):
    masks = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 1.0]],  # one non-zero
            [[0.1, 0.2], [0.3, 0.4]],  # graded
            [[1.0, 1.0], [0.0, 0.0]],  # half
        ],
        device=device,
    )
    # Gini, weights (2k - 5) = (-3, -1, 1, 3) on sorted values, / (4 * sum):
    #   [0, 0, 0, 1]: 3 / 4 = 0.75
    #   [.1, .2, .3, .4]: (-0.3 - 0.2 + 0.3 + 1.2) / (4 * 1.0) = 0.25
    #   [0, 0, 1, 1]: (1 + 3) / (4 * 2) = 0.5
    _close(sparseness(masks, eps=0.0), [0.75, 0.25, 0.5])
    # Entropy of fractions: 0; -(.1 ln .1 + .2 ln .2 + .3 ln .3 + .4 ln .4) = 1.2798542; ln 2
    _close(complexity(masks, eps=0.0), [0.0, 1.2798542, 0.6931472])


def test_all_zero_and_all_one_masks_are_finite(device):
    masks = torch.stack([torch.zeros(6, 5), torch.ones(6, 5)]).to(device)  # (2, 6, 5)
    sps, comp = sparseness(masks), complexity(masks)
    assert torch.isfinite(sps).all() and torch.isfinite(comp).all()
    # Both are uniform after adding eps: Gini 0 and entropy ln(30).
    _close(sps, [0.0, 0.0], atol=1e-6)
    _close(comp, [math.log(30)] * 2, atol=1e-5)
    for eps in (0.0, MASK_EPS):
        assert torch.isfinite(sparseness(torch.zeros(1, 4), eps=eps)).all()
        assert torch.isfinite(complexity(torch.zeros(1, 4), eps=eps)).all()
    _close(sparseness(torch.zeros(1, 4), eps=0.0), [0.0])
    _close(complexity(torch.zeros(1, 4), eps=0.0), [math.log(4)])


def _np_quantus_sparseness(a: np.ndarray) -> float:
    """quantus.Sparseness.evaluate_instance, written out: Gini of |a| + 1e-7."""
    a = np.abs(np.asarray(a, dtype=np.float64).reshape(-1)) + 1e-7
    a = np.sort(a)
    n = a.shape[0]
    numerator = 0.0
    for k in range(1, n + 1):
        numerator += (2 * k - n - 1) * a[k - 1]
    return numerator / (n * a.sum())


def _np_complexity(a: np.ndarray, eps: float) -> float:
    """Entropy of the fractional contributions (|a_i| + eps) / sum_j (|a_j| + eps)."""
    a = np.abs(np.asarray(a, dtype=np.float64).reshape(-1)) + eps
    total = a.sum()
    entropy = 0.0
    for value in a:
        q = value / total
        if q > 0:
            entropy -= q * math.log(q)
    return entropy


def test_sparseness_and_complexity_match_numpy_reference(device):
    rng = np.random.default_rng(3)
    soft = rng.random((4, 20, 33))
    soft[soft < 0.4] = 0.0  # exact zeros, like thresholded masks
    binary = (rng.random((3, 20, 33)) < 0.1).astype(np.float64)
    peaky = 1 / (1 + np.exp(-6 * rng.standard_normal((3, 20, 33))))
    for masks in (soft, binary, peaky):
        t = torch.tensor(masks, dtype=torch.float32, device=device)
        sps, comp = sparseness(t).cpu(), complexity(t).cpu()
        for i in range(masks.shape[0]):
            m = masks[i].astype(np.float32)
            assert abs(sps[i].item() - _np_quantus_sparseness(m)) < 1e-6
            assert abs(comp[i].item() - _np_complexity(m, MASK_EPS)) < 1e-6
            # quantus' literal Complexity (no eps; scipy entropy) differs by ~eps only.
            reference = scipy.stats.entropy(np.abs(m.reshape(-1)) / np.abs(m).sum())
            assert abs(comp[i].item() - reference) < 1e-4


# ------------------------------------------------------------------------------------------
# Random baseline
# ------------------------------------------------------------------------------------------
def test_random_mask_like_keeps_sparsity_and_differs(device):
    g = torch.Generator(device=device).manual_seed(0)
    binary = torch.zeros(3, 10, 12, device=device)
    binary[0, :2] = 1.0  # 24 ones
    binary[1, 3:8, 4:6] = 1.0  # 10 ones
    binary[2, 0, 0] = 1.0  # 1 one
    rand = random_mask_like(binary, g)
    assert rand.shape == binary.shape and rand.dtype == binary.dtype
    torch.testing.assert_close(rand.sum(dim=(1, 2)), binary.sum(dim=(1, 2)))
    assert not torch.equal(rand[0], binary[0]) and not torch.equal(rand[1], binary[1])

    soft = torch.rand(2, 10, 12, device=device)
    rand_soft = random_mask_like(soft, g)
    torch.testing.assert_close(
        rand_soft.reshape(2, -1).sort(dim=1).values, soft.reshape(2, -1).sort(dim=1).values
    )
    assert not torch.equal(rand_soft, soft)
    torch.testing.assert_close(sparseness(rand_soft), sparseness(soft), atol=1e-6, rtol=0)
    # Reproducible with the same seed, different with another.
    a = random_mask_like(soft, torch.Generator(device=device).manual_seed(5))
    b = random_mask_like(soft, torch.Generator(device=device).manual_seed(5))
    c = random_mask_like(soft, torch.Generator(device=device).manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # A mask that matches the truth beats the chance baseline on IoU.
    truth = binary
    loc_true = localization_metrics(binary, truth, torch.ones_like(binary))
    loc_rand = localization_metrics(rand, truth, torch.ones_like(binary))
    assert (loc_true["loc_iou"] == 1).all()
    assert (loc_rand["loc_iou"][:2] < 0.5).all()


# ------------------------------------------------------------------------------------------
# Localisation
# ------------------------------------------------------------------------------------------
def test_localization_hand_computed(device):
    mask = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]], device=device)
    truth = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]], device=device)
    magnitude = torch.tensor([[[2.0, 2.0], [4.0, 1.0]]], device=device)
    # (M |S|)^2 = [[4, 1], [1, 0]]: total 6, inside truth 1 + 1 = 2 -> 1/3 (soft mask).
    # threshold 0.5 is strict: only (0, 0) is in; it is outside the truth -> P = R = IoU = 0.
    out = localization_metrics(mask, truth, magnitude)
    assert sorted(out) == ["loc_energy_in", "loc_iou", "loc_precision", "loc_recall"]
    _close(out["loc_precision"], [0.0])
    _close(out["loc_recall"], [0.0])
    _close(out["loc_iou"], [0.0])
    _close(out["loc_energy_in"], [1 / 3])
    # threshold 0.2: binarised [[1, 1], [1, 0]]; TP 2, |B| 3, |G| 3, union 4.
    out = localization_metrics(mask, truth, magnitude, threshold=0.2)
    _close(out["loc_precision"], [2 / 3])
    _close(out["loc_recall"], [2 / 3])
    _close(out["loc_iou"], [0.5])
    _close(out["loc_energy_in"], [1 / 3])


def test_localization_edge_cases(device):
    z, o = torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device)
    half = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], device=device)
    masks = torch.stack([z, z, o, o])  # empty, empty, full, full
    truths = torch.stack([z, half, z, half])  # empty, half, empty, half
    out = localization_metrics(masks, truths, torch.ones_like(masks))
    for value in out.values():
        assert torch.isfinite(value).all()
    # both empty -> 1; empty mask on a truth -> 0; mask on empty truth -> 0; full on half:
    # P = 3/6, R = 1, IoU = 3/6, energy 3/6.
    _close(out["loc_precision"], [1.0, 0.0, 0.0, 0.5])
    _close(out["loc_recall"], [1.0, 0.0, 0.0, 1.0])
    _close(out["loc_iou"], [1.0, 0.0, 0.0, 0.5])
    _close(out["loc_energy_in"], [1.0, 0.0, 0.0, 0.5])
    # Silent input: no masked energy anywhere.
    silent = localization_metrics(o.unsqueeze(0), half.unsqueeze(0), z.unsqueeze(0))
    _close(silent["loc_energy_in"], [0.0])
    with pytest.raises(ValueError, match="same shape"):
        localization_metrics(masks, truths[:, :1], torch.ones_like(masks))


# ------------------------------------------------------------------------------------------
# Accumulator
# ------------------------------------------------------------------------------------------
def test_accumulator_mean_median_uneven_batches_and_dtypes(device):
    acc = MetricAccumulator(median_keys=["AD"])
    acc.update({"AD": torch.tensor([1.0, 2.0, 10.0], dtype=torch.float16, device=device)})
    acc.update({"AD": torch.tensor([4.0], dtype=torch.float64, device=device)})
    acc.update({"AD": torch.tensor([100.0, 3.0], dtype=torch.bfloat16, device=device)})
    acc.update({"AI": torch.tensor(100.0), "AD": 0.0})  # a 0-d tensor and a float: 1 sample
    summary = acc.summarize()
    # AD: 1, 2, 10, 4, 100, 3, 0 -> mean 120 / 7; sorted 0 1 2 3 4 10 100 -> median 3
    assert summary["AD"] == pytest.approx(120 / 7, abs=1e-9)
    assert summary["AD_median"] == pytest.approx(3.0, abs=1e-9)
    assert summary["AI"] == 100.0
    assert summary["n_samples"] == 7.0
    assert all(type(v) is float for v in summary.values())
    json.dumps(summary)  # plain floats only

    even = MetricAccumulator(median_keys=("x",))
    even.update({"x": torch.tensor([1.0, 2.0, 10.0])})
    even.update({"x": torch.tensor([4.0])})
    assert even.summarize()["x_median"] == 3.0  # mean of the middle pair (2, 4)
    even.reset()
    with pytest.raises(ValueError, match="update"):
        even.summarize()


def test_accumulator_rejects_bad_values():
    acc = MetricAccumulator(median_keys=["missing"])
    with pytest.raises(ValueError, match="NaN"):
        acc.update({"AD": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="one value per sample"):
        acc.update({"AD": torch.ones(2, 2)})
    acc.update({"AD": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="median_keys"):
        acc.summarize()


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        acc = MetricAccumulator(median_keys=["AD"])
        if rank == 0:
            acc.update({"AD": torch.tensor([1.0, 2.0, 3.0]), "accuracy": torch.tensor([1.0])})
            acc.update({"AD": torch.tensor([4.0])})
        else:
            acc.update({"AD": torch.tensor([100.0])})
        summary = acc.summarize()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(summary, f)
    finally:
        dist.destroy_process_group()


def test_accumulator_gathers_across_ddp_processes(tmp_path):
    # fork: the workers inherit the imported modules (spawn would re-import torch twice).
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    for rank in range(2):
        summary = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # AD over both processes: 1, 2, 3, 4, 100 -> mean 22, median 3; accuracy only on rank 0.
        assert summary == {
            "AD": 22.0,
            "AD_median": 3.0,
            "accuracy": 1.0,
            "n_samples": 5.0,
        }


# --------------------------------------------------------------------------------------------
# Collapse detectors: input dependence, time / frequency profiles, swap partners
# --------------------------------------------------------------------------------------------
def test_mask_dependence_hand_computed(device):
    # masks [1, 0] and [0, 0]: mean mask [0.5, 0]; between = 0.25 + 0.25 = 0.5;
    # grand mean 0.25, total = 0.5625 + 0.0625 + 0.0625 + 0.0625 = 0.75 -> 2/3
    dep = MaskDependence()
    dep.update(torch.tensor([[[1.0, 0.0]]], device=device))
    dep.update(torch.tensor([[[0.0, 0.0]]], device=device))
    assert dep.summarize() == pytest.approx(2 / 3)
    # a fixed pattern plus small clip-dependent changes: a small share
    gen = torch.Generator().manual_seed(0)
    pattern = torch.rand(1, 20, 30, generator=gen)
    masks = pattern + 0.05 * torch.rand(16, 20, 30, generator=gen)
    collapsed = MaskDependence()
    collapsed.update(masks.to(device))
    assert collapsed.summarize() < 0.05
    independent = MaskDependence()
    independent.update(torch.rand(16, 20, 30, generator=gen).to(device))
    assert independent.summarize() > 0.9
    constant = MaskDependence()
    constant.update(torch.full((3, 4, 5), 0.7, device=device))
    assert constant.summarize() == 0.0
    # another frame count is resized to the first one's
    independent.update(torch.rand(2, 40, 30, generator=gen).to(device))
    assert 0.0 <= independent.summarize() <= 1.0
    with pytest.raises(ValueError, match="before any update"):
        MaskDependence().summarize()


def test_profile_correlation_follows_the_event(device):
    truth = torch.zeros(2, 10, 8, device=device)
    truth[:, 3:6, 2:4] = 1.0  # an event in frames 3-5, bins 2-3
    follows = torch.full_like(truth, 0.1) + 0.8 * truth
    fixed_band = torch.zeros_like(truth)
    fixed_band[:, :, 2:4] = 1.0  # right frequencies, every frame
    out = profile_correlation(torch.cat((follows[:1], fixed_band[:1])), truth)
    assert out["loc_time_corr"].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert out["loc_freq_corr"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    shifted = torch.roll(follows, 5, dims=1)  # the event at the wrong time
    assert float(profile_correlation(shifted, truth)["loc_time_corr"][0]) < 0


def test_swap_partners_prefers_the_batch_then_earlier_masks(device):
    pred = torch.tensor([1, 1, 2, 1], device=device)
    # batch: clip 0 -> 2 (next of another class), 1 -> 2, 2 -> 3, 3 -> 2 (cyclic)
    assert swap_partners(pred, pred).tolist() == [2, 2, 3, 2]
    same = torch.tensor([4, 4], device=device)
    pool = torch.tensor([4, 4, 4, 7], device=device)  # two earlier masks, the second of class 7
    assert swap_partners(same, pool).tolist() == [3, 3]
    assert swap_partners(same, same).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="swap_partners"):
        swap_partners(pred, pred[:2])
