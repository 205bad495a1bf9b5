"""L-MAC: the loss, the frozen classifier, the fine-tuning gate, and the training recipe."""

import json
import math
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch

from audio_interpretability.brains.interpreter import Interpretation
from audio_interpretability.brains.lmac import (
    LMAC,
    cross_correlation,
    guidance_loss,
    total_variation,
)
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "lmac_cnn14.yaml"
N_CLASSES = 5
# A tiny CNN14 (emb_dim = 32 * base_channels, as the decoder needs) and a tiny decoder.
TINY = {"base_channels": 2, "emb_dim": 64, "decoder_width": 16, "out_n_neurons": N_CLASSES}


def load_train_lmac():
    module = load_script("train_lmac", ROOT / "recipes" / "ESC50" / "interpret" / "train_lmac.py")
    return module


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> dict:
    """A tiny CNN14 + linear head with random weights, exported as the classifier recipe does."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, N_CLASSES), folder)


def make_brain(tmp_path, device, classifier_ckpt, **overrides) -> LMAC:
    values = {
        "data_folder": str(tmp_path / "unused"),
        "output_folder": str(tmp_path / "out"),
        "embedding_model_path": classifier_ckpt["embedding_model"],
        "classifier_model_path": classifier_ckpt["classifier"],
        "num_threads": 0,
        **TINY,
        **overrides,
    }
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)
    return LMAC(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": str(device), "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )


def tiny_batch(n=3, seconds=1.0, sample_rate=16000) -> PaddedBatch:
    """Tones over noise, one clip per item (seeded, independent of the global RNG)."""
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    items = []
    for i in range(n):
        tone = torch.sin(2 * torch.pi * (300.0 + 400.0 * i) * t) * (t > 0.3 * (i % 2))
        wav = tone + 0.1 * torch.randn(t.numel(), generator=gen)
        wav = wav / wav.abs().max()
        items.append({"id": f"clip{i}", "sig": wav, "class_string_encoded": torch.tensor([i])})
    return PaddedBatch(items)


def test_frame_alignment(tmp_path, device, classifier_ckpt):
    """crop (published): the mask, X, the metrics' ground truth cover the decoder's frames;
    pad: every frame of the clip; the listenable output keeps the clip's length either way."""
    batch = tiny_batch()
    batch.event_sig = batch.sig  # stems: the ground truth is computed (and cropped)
    batch.background_sig = PaddedBatch([{"x": 0.01 * torch.ones(16000)} for _ in range(3)]).x
    frames = {}
    for alignment in ("crop", "pad"):
        brain = make_brain(tmp_path / alignment, device, classifier_ckpt, frame_alignment=alignment)
        brain.on_stage_start(sb.Stage.TEST)
        out = brain.compute_forward(batch, sb.Stage.TEST)
        assert out.mask.shape == out.X.shape == out.extras["truth"].shape
        frames[alignment] = out.X.shape[1]
        wav = brain.hparams.frontend.invert(torch.expm1(out.X_int), out.phase, 16000)
        assert wav.shape == (3, 16000)
        X_full = brain.preprocess(batch.sig.data.to(device)).X
        assert torch.equal(out.X, X_full[:, : frames[alignment]])
    assert frames == {"crop": 81, "pad": 87}
    with pytest.raises(ValueError, match="frame_alignment"):
        make_brain(tmp_path / "bad", device, classifier_ckpt, frame_alignment="stretch")


# --------------------------------------------------------------------------------------------
# Loss and gradients
# --------------------------------------------------------------------------------------------
def test_loss_decreases_gradients_reach_only_the_decoder(tmp_path, device, classifier_ckpt):
    brain = make_brain(tmp_path, device, classifier_ckpt, lr=0.003)
    brain.init_optimizers()
    batch = tiny_batch()
    model = brain.hparams.model
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items()}  # BN stats too

    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    # published frame_alignment crop: X cropped to the decoder's 8 (87 // 8) + 1 = 81 frames
    assert out.mask.shape == out.X.shape == out.phase.shape and out.X.shape[1] == 81
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    loss = brain.compute_objectives(out, batch, sb.Stage.TRAIN)
    loss.backward()
    decoder_grads = [p.grad for p in brain.modules.psi.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in decoder_grads)
    assert sum(float(g.abs().sum()) for g in decoder_grads) > 0
    assert all(p.grad is None for p in model.parameters())
    brain.zero_grad(set_to_none=True)

    def current_loss() -> float:
        with torch.no_grad():
            out = brain.compute_forward(batch, sb.Stage.TRAIN)
            return float(brain.interpreter_loss(out, batch, sb.Stage.TRAIN))

    before = current_loss()
    for _ in range(6):
        brain.fit_batch(batch)
    after = current_loss()
    assert after < before - 1e-3, (before, after)

    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, frozen[key]), f"frozen classifier changed: {key}"


@pytest.mark.parametrize("regularizer", ["published", "per_sample"])
def test_loss_is_the_documented_objective(tmp_path, device, classifier_ckpt, regularizer):
    brain = make_brain(tmp_path, device, classifier_ckpt, reg_w_tv=0.5, regularizer=regularizer)
    batch = tiny_batch()
    with torch.no_grad():
        out = brain.compute_forward(batch, sb.Stage.TRAIN)
        loss = brain.interpreter_loss(out, batch, sb.Stage.TRAIN)
    y = out.logits.argmax(-1)
    m = out.mask
    if regularizer == "published":  # batch-summed: B * (0.4 mean|M| + 0.5 tv), tv / (2 B)
        tv = ((m[:, :, 1:] - m[:, :, :-1]) ** 2).sum() + ((m[:, 1:] - m[:, :-1]) ** 2).sum()
        reg = m.shape[0] * (0.4 * m.abs().mean() + 0.5 * tv / (2 * m.shape[0]))
    else:
        reg = (0.4 * m.abs().mean((1, 2)) + 0.5 * total_variation(m)).mean()
    expected = 4.0 * F.cross_entropy(out.logits_in, y) - 0.2 * F.cross_entropy(out.logits_out, y)
    assert torch.allclose(loss, expected + reg, atol=1e-5)


def test_total_variation_hand_computed():
    mask = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])  # (1, 2 frames, 3 bins)
    # time: |0-0|, |0-1|, |1-1| -> 1/3 ; frequency: 1, 0, 0, 1 -> 2/4
    assert torch.allclose(total_variation(mask), torch.tensor([1 / 3 + 0.5]))
    assert total_variation(torch.full((2, 4, 5), 0.3)).abs().max() < 1e-7


# --------------------------------------------------------------------------------------------
# Cross-correlation, gate, guidance losses
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dotp", "conv"])
def test_crosscor_identical_is_one_unrelated_near_zero(kind):
    gen = torch.Generator().manual_seed(0)
    s = torch.rand(3, 40, 60, generator=gen) + 0.5
    assert torch.allclose(cross_correlation(s, s, kind), torch.ones(3), atol=1e-5)
    assert torch.allclose(cross_correlation(s, 2.5 * s, kind), torch.ones(3), atol=1e-5)
    a, b = torch.randn(3, 40, 60, generator=gen), torch.randn(3, 40, 60, generator=gen)
    cc = cross_correlation(a, b, kind)
    assert cc.shape == (3,) and float(cc.abs().max()) < 0.1
    assert torch.equal(cross_correlation(torch.zeros(1, 4, 5), s[:1, :4, :5], kind), torch.zeros(1))


def test_crosscor_conv_is_pearson_and_maps_for_smaller_templates():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 10, 12, generator=gen), torch.rand(2, 10, 12, generator=gen)
    pearson = torch.stack(
        [torch.corrcoef(torch.stack((x.flatten(), y.flatten())))[0, 1] for x, y in zip(a, b)]
    )
    assert torch.allclose(cross_correlation(a, b, "conv"), pearson, atol=1e-5)
    assert cross_correlation(a, b[:, :4, :5], "conv").shape == (2, 7, 8)
    with pytest.raises(ValueError, match="crosscortype"):
        cross_correlation(a, b, "fft")


def gate_case(n_pass=2, n_fail=2, bins=20, frames=30):
    """Clean sound in the low bins, noise in the high bins; masks keep one or the other."""
    gen = torch.Generator().manual_seed(0)
    b = n_pass + n_fail
    clean = torch.zeros(b, frames, bins)
    clean[:, :, : bins // 2] = torch.rand(b, frames, bins // 2, generator=gen) + 0.5
    X = clean.clone()
    X[:, :, bins // 2 :] = torch.rand(b, frames, bins - bins // 2, generator=gen) + 0.5
    logits = torch.full((b, frames, bins), -20.0)
    logits[:n_pass, :, : bins // 2] = 20.0  # keeps the clean sound: passes
    logits[n_pass:, :, bins // 2 :] = 20.0  # keeps only the noise: fails
    return X, clean, logits


@pytest.mark.parametrize("kind", ["dotp", "conv"])
@pytest.mark.parametrize("guide", ["binary", "l2"])
def test_gate_counts_and_guidance_replaces_the_regulariser(
    tmp_path, device, classifier_ckpt, kind, guide
):
    first = make_brain(tmp_path / "a", device, classifier_ckpt)
    psi = first.export_interpreter(tmp_path / "psi_model.ckpt")
    brain = make_brain(
        tmp_path / "b",
        device,
        classifier_ckpt,
        finetuning=True,
        pretrained_interpreter=str(psi),
        crosscortype=kind,
        guidelosstype=guide,
    )
    X, clean, logits = (t.to(device) for t in gate_case(n_pass=3, n_fail=2))
    mask = torch.sigmoid(logits)
    gen = torch.Generator().manual_seed(1)
    clf_logits, l_in, l_out = (
        torch.randn(5, N_CLASSES, generator=gen).to(device) for _ in range(3)
    )
    out = Interpretation(
        X_int=mask * X,
        mask=mask,
        phase=torch.zeros_like(X),
        logits=clf_logits,
        logits_in=l_in,
        logits_out=l_out,
        X=X,
        wavs=torch.zeros(5, 10, device=device),
        spec=None,
        extras={"mask_logits": logits, "clean_X": clean},
    )
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    assert brain.guidance_gate(clean, out.X_int).tolist() == [True] * 3 + [False] * 2
    loss = brain.interpreter_loss(out, None, sb.Stage.TRAIN)
    loss2 = brain.interpreter_loss(out, None, sb.Stage.TRAIN)  # counts accumulate per stage
    y = clf_logits.argmax(-1)
    reg = 0.4 * mask.mean() * 2  # published: batch-mean L1 times the 2 clips not gated
    guidance = 4.0 * guidance_loss(logits, X, clean, guide, 0.35)
    guided = torch.cat((guidance[:3], torch.zeros(2))).mean()
    expected = 4.0 * F.cross_entropy(l_in, y) - 0.2 * F.cross_entropy(l_out, y) + reg + guided
    assert torch.allclose(loss, expected, atol=1e-5) and torch.allclose(loss2, expected)
    summary = brain.summarize_stage(sb.Stage.TRAIN, float(loss))
    assert summary["gate_passed"] == 6.0 and summary["gate_fraction"] == pytest.approx(0.6)
    brain.on_stage_start(sb.Stage.TRAIN, 2)
    assert "gate_passed" not in brain.summarize_stage(sb.Stage.TRAIN, 0.0)


def test_guidance_losses_hand_computed():
    clean = torch.tensor([[[0.1, 0.5, 1.0]]])  # bin_th 0.35 -> target [0, 1, 1]
    good = torch.tensor([[[-30.0, 30.0, 30.0]]])
    assert guidance_loss(good, clean, clean, "binary", 0.35).item() < 1e-6
    # bin_th 0.6 -> target [0, 0, 1]: the middle bin now costs BCE(1, 0) = 30 (logit 30)
    assert guidance_loss(good, clean, clean, "binary", 0.6).item() == pytest.approx(10.0, rel=1e-4)
    zero = torch.zeros(1, 1, 3)  # M = 0.5 everywhere: BCE = ln 2 per bin
    assert guidance_loss(zero, clean, clean, "binary").item() == pytest.approx(0.693147, rel=1e-5)
    X = torch.tensor([[[2.0, 1.0, 1.0]]])
    # l2: mean((0.5 * X - clean)^2) = mean(0.9^2, 0^2, 0.5^2)
    assert guidance_loss(zero, X, clean, "l2").item() == pytest.approx((0.81 + 0.25) / 3)
    with pytest.raises(ValueError, match="guidelosstype"):
        guidance_loss(zero, X, clean, "l1")


# --------------------------------------------------------------------------------------------
# Start-up errors
# --------------------------------------------------------------------------------------------
def test_startup_errors(tmp_path, device, classifier_ckpt):
    with pytest.raises(ValueError, match="--pretrained_interpreter"):
        make_brain(tmp_path, device, classifier_ckpt, finetuning=True)
    with pytest.raises(ValueError, match="--pretrained_interpreter"):
        make_brain(tmp_path, device, classifier_ckpt, test_only=True)
    with pytest.raises(FileNotFoundError, match="train_lmac.py"):
        make_brain(
            tmp_path,
            device,
            classifier_ckpt,
            finetuning=True,
            pretrained_interpreter=str(tmp_path / "missing.ckpt"),
        )
    with pytest.raises(ValueError, match="--crosscortype dotp"):
        make_brain(tmp_path, device, classifier_ckpt, crosscortype="xcorr")
    with pytest.raises(ValueError, match="--guidelosstype binary"):
        make_brain(tmp_path, device, classifier_ckpt, guidelosstype="mse")
    wide = make_brain(tmp_path / "wide", device, classifier_ckpt, decoder_width=32)
    path = wide.export_interpreter(tmp_path / "wide.ckpt")
    with pytest.raises(ValueError, match="--decoder_width 32"):
        make_brain(tmp_path, device, classifier_ckpt, pretrained_interpreter=str(path))


# --------------------------------------------------------------------------------------------
# The recipe: plain, resume, fine-tuning, WHAM!
# --------------------------------------------------------------------------------------------
def recipe_args(data, out, classifier_ckpt, device, **overrides) -> list[str]:
    """Command line of train_lmac.py for a short run of the tiny models on ``data``."""
    options = {
        "data_folder": data,
        "output_folder": out,
        "embedding_model_path": classifier_ckpt["embedding_model"],
        "classifier_model_path": classifier_ckpt["classifier"],
        **TINY,
        "train_fold_nums": "[1]",
        "batch_size": 5,
        "lr": 0.002,
        "number_of_epochs": 1,
        "num_threads": 0,
        "save_interpretations": False,
        "device": device,
        **overrides,
    }
    return [str(YAML), "--noprogressbar"] + [
        x for k, v in options.items() for x in (f"--{k}", str(v))
    ]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_recipe_plain_resume_and_finetuning(tmp_path, tiny_esc50, device, classifier_ckpt):
    train_lmac = load_train_lmac()
    out = tmp_path / "plain"
    results = train_lmac.main(recipe_args(tiny_esc50, out, classifier_ckpt, device))
    metrics = read_json(out / "test_metrics.json")
    assert metrics == results["main"] and metrics["n_samples"] == 10.0
    assert 0.0 <= metrics["fid_in"] <= 1.0 and 0.0 <= metrics["AI"] <= 100.0
    assert 0.0 <= metrics["AD"] <= 100.0 and 0.0 <= metrics["AG"] <= 100.0
    assert -1.0 <= metrics["FF"] <= 1.0 and 0.0 < metrics["SPS"] < 1.0
    assert 0.0 < metrics["COMP"] <= math.log(81 * 513) + 1e-6  # at most the uniform entropy
    assert 0.0 <= metrics["loc_iou"] <= metrics["loc_precision"] <= 1.0  # IoU <= precision
    assert metrics["random_SPS"] == pytest.approx(metrics["SPS"], abs=1e-4)  # same values
    psi = out / "save" / "psi_model.ckpt"
    assert psi.is_file()
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1" in log and "valid fid_in" in log and "epoch: 2" not in log

    # Resume: the same folder with 2 epochs continues with epoch 2 only.
    train_lmac.main(recipe_args(tiny_esc50, out, classifier_ckpt, device, number_of_epochs=2))
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1

    # test_only: no training, the given decoder is evaluated.
    only = tmp_path / "test_only"
    train_lmac.main(
        recipe_args(
            tiny_esc50, only, classifier_ckpt, device, test_only=True, pretrained_interpreter=psi
        )
    )
    assert read_json(only / "test_metrics.json")["n_samples"] == 10.0
    assert not (only / "save").exists() or not list((only / "save").glob("CKPT*"))
    assert "epoch:" not in (only / "train_log.txt").read_text()

    # The published fine-tuning command reuses the pre-training folder: the fine-tuning run
    # goes to finetuning/ subfolders and leaves the pre-trained decoder and metrics alone.
    pretrained = psi.read_bytes()
    before = read_json(out / "test_metrics.json")
    results = train_lmac.main(
        recipe_args(
            tiny_esc50,
            out,
            classifier_ckpt,
            device,
            finetuning=True,
            pretrained_interpreter=psi,
            g_w=4,
            crosscor_th=0.0,
            number_of_epochs=1,
        )
    )
    assert psi.read_bytes() == pretrained and read_json(out / "test_metrics.json") == before
    assert (out / "save" / "finetuning" / "psi_model.ckpt").is_file()
    assert list((out / "save" / "finetuning").glob("CKPT*"))
    tuned = read_json(out / "finetuning" / "test_metrics.json")
    assert tuned == results["main"] and tuned["gate_fraction"] == 1.0
    log = (out / "train_log.txt").read_text()
    assert "train gate_passed: 10.00" in log  # fine-tuned for its 1 epoch, not resumed at 2

    # In a new folder: the usual layout.
    ft = tmp_path / "finetuned"
    train_lmac.main(
        recipe_args(
            tiny_esc50,
            ft,
            classifier_ckpt,
            device,
            finetuning=True,
            pretrained_interpreter=psi,
            g_w=4,
            crosscor_th=0.0,
        )
    )
    log = (ft / "train_log.txt").read_text()
    assert "train gate_passed: 10.00" in log and "train gate_fraction: 1.00" in log
    assert (ft / "save" / "psi_model.ckpt").is_file()
    assert read_json(ft / "test_metrics.json")["gate_fraction"] == 1.0
    # Pre-training on top of fine-tuning checkpoints would mix the stages: refused.
    with pytest.raises(ValueError, match="new --output_folder"):
        train_lmac.main(recipe_args(tiny_esc50, ft, classifier_ckpt, device, number_of_epochs=2))


def test_recipe_with_wham_noise(tmp_path, tiny_esc50, tiny_wham, device, classifier_ckpt):
    train_lmac = load_train_lmac()
    out = tmp_path / "wham"
    args = recipe_args(
        tiny_esc50, out, classifier_ckpt, device, add_wham_noise=True, wham_folder=tiny_wham
    )
    results = train_lmac.main(args)
    noisy, clean = (
        read_json(out / "test_metrics.json"),
        read_json(out / "clean" / "test_metrics.json"),
    )
    assert noisy == results["main"] and clean == results["clean"]
    assert noisy["n_samples"] == clean["n_samples"] == 10.0
    # Same decoder, different inputs: the noisy setting scores differently.
    assert noisy["loc_energy_in"] != clean["loc_energy_in"] and noisy["AD"] != clean["AD"]


def test_nmf_view_of_saved_figures(tmp_path, device, classifier_ckpt):
    """nmf_view_path adds M*X rebuilt from its most active atoms of a train_nmf.py dictionary."""
    from audio_interpretability.nmf import NMFDecoderAudio, export_nmf_decoder

    torch.manual_seed(0)
    path = export_nmf_decoder(NMFDecoderAudio(n_comp=6, n_freq=513), tmp_path / "nmf")
    brain = make_brain(
        tmp_path, device, classifier_ckpt, nmf_view_path=str(path), nmf_view_components=2
    )
    X_int, mask, _, X = brain.interpret_computation_steps(tiny_batch().sig.data)
    panels = brain.interpretation_panels(X, mask, {}, 0)
    title, view = panels[-1]
    assert title == "M*X from its top 2 NMF atoms" and view.shape == X[0].shape
    assert bool((view >= 0).all()) and float(view.sum()) > 0
    # 2 atoms of 6 rebuild M*X less well than all 6 would, but they do follow it
    assert torch.corrcoef(torch.stack((view.flatten(), X_int[0].cpu().flatten())))[0, 1] > 0
    assert len(panels) == len(super(type(brain), brain).interpretation_panels(X, mask, {}, 0)) + 1
    with pytest.raises(FileNotFoundError, match="nmf_view_path"):
        make_brain(tmp_path, device, classifier_ckpt, nmf_view_path=str(tmp_path / "none.ckpt"))
