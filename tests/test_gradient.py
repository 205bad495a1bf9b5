"""Gradient baselines (audio_interpretability/brains/gradient.py): Saliency, SmoothGrad,
Integrated Gradients, Grad-CAM on a tiny CNN14 (base_channels 2, emb_dim 64).

The CNN14's BatchNorm statistics are set by one training-mode pass on random clips, so that
its logits depend on the input (a freshly built CNN14 in eval mode answers almost the same
logits to every clip, and its gradients are ~1e-5).
"""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from speechbrain.utils.train_logger import FileTrainLogger

from audio_interpretability.brains import INTERPRETERS, interpreter_class
from audio_interpretability.brains.gradient import (
    GradCAM,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    attribution_to_mask,
    resolve_module,
)
from audio_interpretability.features import Frontend
from audio_interpretability.models import AudioClassifier, Cnn14, LinearHead

METHODS = {
    "saliency": Saliency,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
    "gradcam": GradCAM,
}


def tiny_cnn14(n_classes: int = 5) -> AudioClassifier:
    """A tiny CNN14 classifier whose BatchNorms saw random clips (see the module docstring)."""
    gen = torch.Generator().manual_seed(123)
    model = AudioClassifier(Cnn14(base_channels=2, emb_dim=64), LinearHead(64, n_classes))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: the statistics of this one pass
    model.train()
    with torch.no_grad():
        model(Frontend()(0.1 * torch.randn(8, 16000, generator=gen)).X)
    return model.eval()


def make_brain(cls, tmp_path, model=None, **overrides):
    hparams = dict(
        frontend=Frontend(),
        model=model if model is not None else tiny_cnn14(),
        embedding_model_path=None,
        classifier_model_path=None,
        output_folder=str(tmp_path),
        seed=0,
        save_interpretations=False,
        n_saved_interpretations=0,
        add_wham_noise=False,
        wham_folder=None,
        wham_split="tt",
        wham_snr_db=0.0,
        random_baseline=True,
        loc_threshold=0.5,
        train_logger=FileTrainLogger(str(tmp_path / "log.txt")),
        internal_batch_size=None,
        smoothgrad_n_samples=4,
        smoothgrad_stdev=0.15,
        ig_n_steps=8,
        ig_baseline="zero",
        gradcam_layer="embedding_model.conv_block6",
    )
    hparams.update(overrides)
    return cls(hparams=hparams, run_opts={"device": "cpu"})


@pytest.fixture(scope="module")
def wavs() -> torch.Tensor:
    """(3, 16000) seeded random 1-s clips (a generator: the global RNG is not touched)."""
    return 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model() -> AudioClassifier:
    return tiny_cnn14()


def test_registered_with_one_yaml():
    for name, cls in METHODS.items():
        assert interpreter_class(name) is cls
        assert INTERPRETERS[name][1] == "gradient_cnn14.yaml"
        assert cls.needs_input_gradients


@pytest.mark.parametrize("name", sorted(METHODS))
def test_mask_shape_range_and_frozen_classifier(name, tmp_path, wavs, model):
    brain = make_brain(METHODS[name], tmp_path, model)
    _, mask, _, X = brain.interpret_computation_steps(wavs)  # runs under torch.no_grad()
    assert mask.shape == X.shape == (3, 87, 513)
    assert not mask.requires_grad and bool(torch.isfinite(mask).all())
    assert mask.min() >= 0 and mask.max() <= 1
    assert torch.allclose(mask.amax(dim=(1, 2)), torch.ones(3))
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_deterministic(name, tmp_path, wavs, model):
    first = make_brain(METHODS[name], tmp_path, model).interpret_computation_steps(wavs)[1]
    second = make_brain(METHODS[name], tmp_path, model).interpret_computation_steps(wavs)[1]
    assert torch.equal(first, second)


def test_smoothgrad_seed_and_global_rng(tmp_path, wavs, model):
    brain = make_brain(SmoothGrad, tmp_path, model)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    mask = brain.interpret_computation_steps(wavs)[1]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    brain.on_stage_start("TEST")  # a new stage draws the same noise again
    assert torch.equal(brain.interpret_computation_steps(wavs)[1], mask)
    other = make_brain(SmoothGrad, tmp_path, model, seed=1).interpret_computation_steps(wavs)[1]
    assert not torch.allclose(other, mask)
    # and the noise matters: SmoothGrad is not the plain saliency
    plain = make_brain(Saliency, tmp_path, model).interpret_computation_steps(wavs)[1]
    assert not torch.allclose(plain, mask)


def test_smoothgrad_on_silence_stays_finite(tmp_path, model):
    """Silent stretches (X = 0) and strong noise: noisy copies below 0 used to reach
    log1p(fbank(expm1(X))) < -1, a NaN attribution; they are clamped at 0 (no magnitude)."""
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
    wav[:, 4000:12000] = 0.0  # half of each clip silent
    brain = make_brain(SmoothGrad, tmp_path, model, smoothgrad_stdev=1.0, smoothgrad_n_samples=8)
    mask = brain.interpret_computation_steps(wav)[1]
    assert bool(torch.isfinite(mask).all()) and torch.allclose(mask.amax(dim=(1, 2)), torch.ones(2))


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "gradcam"])
def test_batch_equals_per_clip(name, tmp_path, wavs, model):
    brain = make_brain(METHODS[name], tmp_path, model)
    batch = brain.interpret_computation_steps(wavs)[1]
    for i in range(wavs.shape[0]):
        single = brain.interpret_computation_steps(wavs[i : i + 1])[1]
        assert torch.allclose(batch[i : i + 1], single, atol=1e-4), name


def test_integrated_gradients_completeness(tmp_path, wavs, model):
    """sum A = f(X) - f(X0) for the target logit, up to the quadrature error (the tiny CNN14 is
    piecewise linear through its ReLUs and max-poolings: the error shrinks slowly)."""
    brain = make_brain(IntegratedGradients, tmp_path, model, ig_n_steps=256)
    X = brain.preprocess(wavs[:2]).X
    X0 = brain.baseline(X)
    with torch.no_grad():
        logits, logits0 = brain.forward_logits(X), brain.forward_logits(X0)
    target = logits.argmax(dim=-1)
    gap = (logits - logits0).gather(1, target[:, None])[:, 0]  # (B,) f(X) - f(X0)
    A, delta = brain.attributions(X, target, return_convergence_delta=True)
    assert A.shape == X.shape and bool((gap.abs() > 0.1).all())
    assert torch.allclose(A.sum(dim=(1, 2)) - gap, delta, atol=1e-4)  # captum's delta is ours
    assert bool((delta.abs() <= 0.1 * gap.abs()).all()), (delta, gap)
    brain.hparams.ig_n_steps = 32  # a coarser rule misses by more: delta measures the rule
    _, coarse = brain.attributions(X, target, return_convergence_delta=True)
    assert coarse.abs().sum() > delta.abs().sum()


def test_attribution_to_mask_rules_and_zero(caplog):
    A = torch.tensor([[[-4.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    with caplog.at_level(logging.WARNING):
        mask = attribution_to_mask(A)
    assert torch.equal(mask, torch.tensor([[[1.0, 0.5], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    assert "1 of 2 attributions are all zero" in caplog.text
    relu = attribution_to_mask(torch.tensor([[-4.0, 2.0], [-1.0, -2.0]]), rule="relu")
    assert torch.equal(relu, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # no NaN for all-negative
    with pytest.raises(ValueError, match="NaN or Inf"):
        attribution_to_mask(torch.tensor([[math.nan]]))


def test_zero_gradient_gives_zero_mask(tmp_path, wavs, model, caplog):
    """A clip that no gradient reaches (silence through a ReLU cut: here a zero head) gives an
    all-zero mask and a warning, not NaN."""
    head = LinearHead(64, 5)
    for p in head.parameters():
        torch.nn.init.zeros_(p)
    dead = AudioClassifier(model.embedding_model, head).eval()
    with caplog.at_level(logging.WARNING):
        mask = make_brain(Saliency, tmp_path, dead).interpret_computation_steps(wavs)[1]
    assert torch.equal(mask, torch.zeros_like(mask))
    assert "all zero" in caplog.text


def test_gradcam_layers(tmp_path, wavs):
    """FocalNet: its last-stage modulator works; ViT: a ValueError that names what to use."""
    from audio_interpretability.models import CosineHead, FocalNet, ViT

    focal = FocalNet(img_size=64, embed_dim=8, depths=(1, 1, 1, 1))
    model = AudioClassifier(focal, CosineHead(focal.embedding_dim, 5)).eval()
    brain = make_brain(
        GradCAM, tmp_path, model, gradcam_layer="embedding_model.stages.-1.blocks.-1.modulation.h"
    )
    mask = brain.interpret_computation_steps(wavs)[1]
    assert mask.shape == (3, 87, 513) and bool(torch.isfinite(mask).all())
    assert mask.unique().numel() > 2  # the (2, 2) map upsampled, not one constant

    vit = ViT(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    model = AudioClassifier(vit, CosineHead(16, 5)).eval()
    brain = make_brain(GradCAM, tmp_path, model, gradcam_layer="embedding_model.blocks.-1")
    with pytest.raises(ValueError, match="integrated_gradients, or AMT"):
        brain.interpret_computation_steps(wavs)
    brain = make_brain(GradCAM, tmp_path, model, gradcam_layer=None)  # gradient_vit.yaml's
    with pytest.raises(ValueError, match="gradcam_layer is null.*integrated_gradients"):
        brain.interpret_computation_steps(wavs)
    with pytest.raises(ValueError, match="has no 'conv_block9'"):
        resolve_module(model, "embedding_model.conv_block9")


def test_bad_hparams_fail_with_the_fix(tmp_path, wavs, model):
    with pytest.raises(ValueError, match="--ig_baseline zero"):
        make_brain(IntegratedGradients, tmp_path, model, ig_baseline="blur").interpret(wavs)
    with pytest.raises(ValueError, match="smoothgrad_n_samples >= 1"):
        make_brain(SmoothGrad, tmp_path, model, smoothgrad_n_samples=0).interpret(wavs)


@pytest.mark.parametrize("name", ["saliency", "smoothgrad", "integrated_gradients"])
def test_eval_py(name, tmp_path, tiny_esc50, tiny_wham, monkeypatch):
    """eval.py with gradient_cnn14.yaml and --int_method: the same test_metrics.json as every
    interpreter (gradcam runs the whole contract test, tests/test_interpreters_contract.py)."""
    import test_interpreters_contract as contract

    sizes = {"base_channels": 2, "emb_dim": 64, "int_method": name}
    sizes.update(smoothgrad_n_samples=2, ig_n_steps=4)
    monkeypatch.setitem(contract.INTERPRETERS, name, ("gradient_cnn14.yaml", sizes, False))
    results = contract.run_eval(name, tmp_path, tiny_esc50, tiny_wham, overlap_type="mixtures")
    assert set(results) == {"mixtures"}
    metrics = json.loads((tmp_path / "out" / "mixtures" / "test_metrics.json").read_text())
    assert metrics == results["mixtures"] and contract.COMMON_KEYS <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["n_samples"] == 20
    assert 0 < metrics["mask_fraction"] <= 1


@pytest.mark.parametrize(
    "yaml, sizes, int_method",
    [
        (
            "gradient_focalnet.yaml",
            {"img_size": 64, "embed_dim": 8, "depths": [1, 1, 1, 1]},
            "gradcam",
        ),
        (
            "gradient_vit.yaml",
            {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
            "integrated_gradients",
        ),
    ],
)
def test_focalnet_and_vit_yamls(yaml, sizes, int_method, tmp_path, wavs):
    """The FocalNet and ViT YAMLs build their interpreters; the ViT's refuses Grad-CAM."""
    from hyperpyyaml import load_hyperpyyaml

    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path), "ig_n_steps": 4}
    overrides.update(sizes, int_method=int_method, embedding_model_path=None)
    overrides.update(classifier_model_path=None, out_n_neurons=5)
    with open(Path(__file__).resolve().parents[1] / "hparams" / yaml, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    brain = interpreter_class(int_method)(hparams=hparams, run_opts={"device": "cpu"})
    mask = brain.interpret_computation_steps(wavs)[1]
    assert mask.shape == (3, 87, 513) and bool(torch.isfinite(mask).all())
    peak = mask.amax(dim=(1, 2))  # Grad-CAM: 0 where a clip has no positive evidence
    assert bool(((peak - 1).abs() < 1e-6).all() if int_method != "gradcam" else (peak <= 1).all())
    if "vit" in yaml:
        gradcam = GradCAM(hparams=hparams, run_opts={"device": "cpu"})
        with pytest.raises(ValueError, match="gradcam_layer is null"):
            gradcam.interpret_computation_steps(wavs)


def test_gradcam_follows_a_replaced_classifier(tmp_path, wavs, model):
    """The cached Grad-CAM layer belongs to the brain's current classifier."""
    brain = make_brain(GradCAM, tmp_path, model)
    brain.interpret(wavs)
    other = tiny_cnn14()
    brain.hparams.model = other
    assert brain._layer() is other.embedding_model.conv_block6
