"""PIQ: the published objective, the mask, published-layout psi checkpoints, the recipe, eval.py."""

import json
from pathlib import Path

import helpers
import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.PIQ import (
    VectorQuantizedPSI_Audio,
    VectorQuantizedPSIFocalNet_Audio,
    VectorQuantizedPSIViT_Audio,
)

from audio_interpretability.brains.piq import PIQ, align_decoder_output, piq_loss
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.models.base import AudioClassifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.conv2d import Conv2dEncoder
from audio_interpretability.models.decoders import CNN14Decoder
from audio_interpretability.models.focalnet import FocalNet
from audio_interpretability.models.heads import LinearHead
from audio_interpretability.models.piq_hidden import FocalNetLastStage

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "hparams"
RECIPES = ROOT / "recipes" / "ESC50" / "interpret"
N_CLASSES = 5
# A tiny CNN14 (piq_cnn14.yaml) or Conv2d encoder (piq.yaml) and codebook; psi's dim is emb_dim.
TINY = {"base_channels": 2, "emb_dim": 64, "K": 16, "out_n_neurons": N_CLASSES}
TINY_CONV2D = {"emb_dim": 8, "K": 10}
TINY_FOCALNET = {"img_size": 64, "embed_dim": 8, "depths": [1, 1, 1, 1], "K": 16}
TINY_VIT = {"img_size": 64, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2, "K": 16}


def load_script(name):
    return helpers.load_script(name, RECIPES / f"{name}.py")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> dict:
    """A tiny CNN14 + linear head with random weights, exported as the classifier recipe does."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, N_CLASSES), folder)


@pytest.fixture(scope="module")
def psi_ckpt(tmp_path_factory) -> str:
    """A published-layout psi: SpeechBrain's class at a tiny size, random weights."""
    torch.manual_seed(1)
    psi = VectorQuantizedPSI_Audio(dim=64, K=16, numclasses=N_CLASSES)
    for module in psi.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("psi") / "psi_model.ckpt"
    torch.save(psi.state_dict(), path)
    return str(path)


def make_brain(tmp_path, device, yaml="piq_cnn14.yaml", sizes=TINY, **overrides) -> PIQ:
    values = {
        "data_folder": str(tmp_path / "unused"),
        "output_folder": str(tmp_path / "out"),
        "num_threads": 0,
        "out_n_neurons": N_CLASSES,
        **sizes,
        **overrides,
    }
    with open(HPARAMS / yaml, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)
    return PIQ(
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


# --------------------------------------------------------------------------------------------
# The objective: a plain-torch transcription of the published compute_objectives
# --------------------------------------------------------------------------------------------
def published_objective(xhat, X_stft_logpower, hcat, z_q_x, hparams):
    """SpeechBrain recipes/ESC50/interpret/train_piq.py, PIQ.compute_objectives (loss part),
    with ``self.hparams`` a dict; ``xhat`` already activated as compute_forward does."""
    loss_fid = 0
    if hparams["use_mask_output"]:
        eps = 1e-10
        target_spec = X_stft_logpower[:, : xhat.shape[1], :]
        target_mask = target_spec > (
            target_spec.max(keepdim=True, dim=-1)[0].max(keepdim=True, dim=-2)[0]
            * hparams["mask_th"]
        )
        target_mask = target_mask.float()
        rec_loss = (
            -target_mask * torch.log(xhat + eps) - (1 - target_mask) * torch.log(1 - xhat + eps)
        ).mean()
    else:
        rec_loss = (X_stft_logpower[:, : xhat.shape[1], :] - xhat).pow(2).mean()
    if hparams["use_vq"]:
        loss_vq = F.mse_loss(z_q_x, hcat.detach())
        loss_commit = F.mse_loss(hcat, z_q_x.detach())
    else:
        loss_vq = 0
        loss_commit = 0
    return hparams["rec_loss_coef"] * rec_loss + loss_vq + loss_commit + loss_fid


@pytest.mark.parametrize("use_mask_output", [True, False])
@pytest.mark.parametrize("use_vq", [True, False])
def test_loss_equals_published(use_mask_output, use_vq):
    gen = torch.Generator().manual_seed(3)
    X = torch.rand(2, 12, 9, generator=gen) * 3  # (B, frames, bins); the decoder covers 10
    logits = torch.randn(2, 10, 9, generator=gen)
    hcat = torch.randn(2, 4, 3, 3, generator=gen)
    z_q_x = torch.randn(2, 4, 3, 3, generator=gen)
    hp = {"use_mask_output": use_mask_output, "use_vq": use_vq, "rec_loss_coef": 0.7}
    hp["mask_th"] = 0.35
    act = torch.sigmoid if use_mask_output else F.softplus

    grads, values = [], []
    for fn in (published_objective, None):
        leaf = logits.clone().requires_grad_(True)
        h = hcat.clone().requires_grad_(True)
        z = z_q_x.clone().requires_grad_(True)
        if fn is None:
            loss = piq_loss(act(leaf), X, h, z, **hp)
        else:
            loss = fn(act(leaf), X, h, z, hp)
        loss.backward()
        values.append(loss.detach())
        grads.append((leaf.grad, h.grad, z.grad))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-7)
    for ours, published in zip(grads[1], grads[0]):
        if published is None:
            assert ours is None or not ours.abs().sum()
        else:
            torch.testing.assert_close(ours, published, rtol=1e-6, atol=1e-9)


def test_align_decoder_output():
    xhat = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    assert torch.equal(align_decoder_output(xhat, 3, 6, "crop"), xhat[:, :3])
    assert torch.equal(align_decoder_output(xhat, 5, 6, "crop"), xhat)  # X is cropped instead
    assert align_decoder_output(xhat, 7, 11, "resize").shape == (2, 7, 11)
    with pytest.raises(ValueError, match="mask_alignment resize"):
        align_decoder_output(xhat, 4, 5, "crop")
    with pytest.raises(ValueError, match="mask_alignment"):
        align_decoder_output(xhat, 4, 6, "stretch")


# --------------------------------------------------------------------------------------------
# The mask, the gradients
# --------------------------------------------------------------------------------------------
def test_mask_in_unit_range_with_X_shape_and_gradients_reach_psi_only(
    tmp_path, device, classifier_ckpt
):
    brain = make_brain(
        tmp_path,
        device,
        embedding_model_path=classifier_ckpt["embedding_model"],
        classifier_model_path=classifier_ckpt["classifier"],
    )
    batch = tiny_batch()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert out.mask.shape == out.X.shape == (3, 87, 513)  # resize: every frame and bin of X
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    assert out.extras["hcat"].shape == out.extras["z_q_x"].shape == (3, 64, 1, 1)
    loss = brain.compute_objectives(out, batch, sb.Stage.TRAIN)
    loss.backward()
    grads = {n: p.grad for n, p in brain.modules.psi.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert float(grads["codebook.embedding.weight"].abs().sum()) > 0  # the VQ term
    assert float(grads["adapter.block.0.weight"].abs().sum()) > 0  # commitment + straight-through
    assert all(p.grad is None for p in brain.hparams.model.parameters())


def test_use_mask_output_false_gives_a_binary_mask(tmp_path, device):
    """The published False branch (reachable by building the Brain; the recipes refuse it)."""
    brain = make_brain(
        tmp_path,
        device,
        use_mask_output=False,
        embedding_model_path=None,
        classifier_model_path=None,
    )
    brain.modules.eval()
    with torch.no_grad():
        out = brain.compute_forward(tiny_batch(), sb.Stage.TEST)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    xhat = out.extras["xhat"]
    assert torch.equal(out.mask, (xhat > xhat.max() * 0.35).float())


def test_focalnet_and_vit_published_decoders_give_X_grid():
    """At 224 x 224 the published hidden maps decode to a 5 s clip's (431, 513) grid (crop)."""
    torch.manual_seed(0)
    net = FocalNet(img_size=224, embed_dim=4, depths=(1, 1, 1, 1), final_norm=False)
    model = AudioClassifier(net, LinearHead(net.embedding_dim, 3)).eval()
    X = torch.rand(1, 431, 513)
    with torch.no_grad():
        clf = FocalNetLastStage(upsample=2)(model, X)
        assert clf.maps[0].shape == (1, 32, 14, 14)
        torch.testing.assert_close(clf.logits, model(X).logits)  # the model's own pass
        for cls in (VectorQuantizedPSIFocalNet_Audio, VectorQuantizedPSIViT_Audio):
            psi = cls(dim=32, K=8, numclasses=3).eval()
            xhat, _, _ = psi(clf.maps[0], torch.tensor([1]))
            assert xhat.shape == (1, 1, 431, 513)


def test_published_conv2d_yaml(tmp_path, device):
    """piq.yaml is the published one: psi reads the Conv2d encoder output (the published
    ``hcat = embedding_model(X)``, (B, dim, T/16, 32)) and decodes it to 16 (T/16) + 1 frames of
    X's 513 bins, to which X is cropped (mask_alignment crop): 65 of 87 frames for 1 s clips,
    417 of 431 for the published 5 s clips."""
    brain = make_brain(
        tmp_path, device, "piq.yaml", TINY_CONV2D, embedding_model_path=None,
        classifier_model_path=None,
    )  # fmt: skip
    assert isinstance(brain.hparams.embedding_model, Conv2dEncoder)
    assert brain.hparams.mask_alignment == "crop"
    batch = tiny_batch()
    brain.modules.train()
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert out.mask.shape == out.X.shape == (3, 65, 513)
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    brain.compute_objectives(out, batch, sb.Stage.TRAIN).backward()
    assert all(p.grad is not None for p in brain.modules.psi.parameters())
    assert all(p.grad is None for p in brain.hparams.model.parameters())
    model = brain.hparams.model.eval()
    X = torch.rand(1, 431, 513, device=device)  # a 5 s clip
    with torch.no_grad():
        clf = brain.hparams.hidden_map(model, X)
        hcat = model.embedding_model(X, return_maps=True).maps[0]
        torch.testing.assert_close(clf.maps[0], hcat)  # the encoder output, as it is
        torch.testing.assert_close(clf.logits, model(X).logits)
        assert hcat.shape == (1, 8, 26, 32)
        xhat, _, _ = brain.modules.psi.eval()(hcat, clf.logits.argmax(-1))
    assert xhat.shape == (1, 1, 417, 513)


@pytest.mark.parametrize(
    "yaml, sizes", [("piq_focalnet.yaml", TINY_FOCALNET), ("piq_vit.yaml", TINY_VIT)]
)
def test_focalnet_vit_yamls(tmp_path, device, yaml, sizes):
    brain = make_brain(
        tmp_path, device, yaml, sizes, embedding_model_path=None, classifier_model_path=None
    )
    with pytest.raises(ValueError, match="mask_alignment resize"):  # tiny images: other bins
        brain.compute_forward(tiny_batch(), sb.Stage.TEST)
    brain = make_brain(
        tmp_path,
        device,
        yaml,
        sizes,
        mask_alignment="resize",
        embedding_model_path=None,
        classifier_model_path=None,
    )
    batch = tiny_batch()
    brain.modules.train()
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert out.mask.shape == out.X.shape and bool(((out.mask >= 0) & (out.mask <= 1)).all())
    brain.compute_objectives(out, batch, sb.Stage.TRAIN).backward()
    assert all(p.grad is not None for p in brain.modules.psi.parameters())


# --------------------------------------------------------------------------------------------
# Published-layout checkpoints
# --------------------------------------------------------------------------------------------
def test_published_psi_checkpoint_loads_strictly_and_matches(
    tmp_path, device, classifier_ckpt, psi_ckpt
):
    brain = make_brain(
        tmp_path,
        device,
        embedding_model_path=classifier_ckpt["embedding_model"],
        classifier_model_path=classifier_ckpt["classifier"],
        pretrained_interpreter=psi_ckpt,
    )
    reference = VectorQuantizedPSI_Audio(dim=64, K=16, numclasses=N_CLASSES)
    reference.load_state_dict(torch.load(psi_ckpt, weights_only=True))
    reference.to(device).eval()
    brain.modules.eval()
    wavs = tiny_batch().sig.data.to(device)
    with torch.no_grad():
        spec, clf, mask_out = brain.interpret(wavs)
        hidden = clf.maps[0]
        xhat, hcat, z_q_x = reference(hidden, clf.logits.argmax(-1))
        expected = torch.sigmoid(
            F.interpolate(xhat, size=spec.X.shape[1:], mode="bilinear", align_corners=False)[:, 0]
        )
    torch.testing.assert_close(mask_out.mask, expected)
    torch.testing.assert_close(mask_out.extras["z_q_x"], z_q_x)
    torch.testing.assert_close(mask_out.extras["hcat"], hcat)

    bad = tmp_path / "other.ckpt"
    torch.save(VectorQuantizedPSI_Audio(dim=32, K=16).state_dict(), bad)
    with pytest.raises(ValueError, match="other shapes"):
        make_brain(
            tmp_path,
            device,
            pretrained_interpreter=str(bad),
            embedding_model_path=None,
            classifier_model_path=None,
        )


# --------------------------------------------------------------------------------------------
# The recipe and eval.py
# --------------------------------------------------------------------------------------------
def common_args(out, classifier_ckpt, device, **overrides) -> list[str]:
    options = {
        "output_folder": out,
        "embedding_model_path": classifier_ckpt["embedding_model"],
        "classifier_model_path": classifier_ckpt["classifier"],
        **TINY,
        "batch_size": 4,
        "num_threads": 0,
        "n_saved_interpretations": 2,
        "device": device,
        **overrides,
    }
    return ["--noprogressbar"] + [x for k, v in options.items() for x in (f"--{k}", str(v))]


def test_train_piq_one_epoch_then_eval(tmp_path, tiny_esc50, classifier_ckpt, device):
    out = tmp_path / "piq"
    args = common_args(out, classifier_ckpt, device, data_folder=tiny_esc50, number_of_epochs=1)
    results = load_script("train_piq").main([str(HPARAMS / "piq_cnn14.yaml")] + args)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics == results["main"] and metrics["n_samples"] == 10.0
    psi = out / "save" / "psi_model.ckpt"
    assert psi.is_file()
    saved = sorted((out / "interpretations").iterdir())
    assert len(saved) == 2
    for folder in saved:
        names = {p.name for p in folder.iterdir()}
        assert {"original.wav", "interpretation.wav", f"{folder.name}.png"} <= names

    # The same metric keys as L-MAC's (an untrained L-MAC decoder, evaluated only).
    lmac_psi = tmp_path / "lmac_psi.ckpt"
    torch.save(CNN14Decoder(in_dim=64, width=16).state_dict(), lmac_psi)
    lmac_out = tmp_path / "lmac"
    lmac_args = common_args(lmac_out, classifier_ckpt, device, data_folder=tiny_esc50)
    lmac_args += ["--test_only", "--pretrained_interpreter", str(lmac_psi), "--decoder_width", "16"]
    lmac_metrics = load_script("train_lmac").main(
        [str(HPARAMS / "lmac_cnn14.yaml")] + _drop_key(lmac_args, "K")
    )["main"]
    assert set(metrics) == set(lmac_metrics)

    # eval.py on the trained psi, out-of-domain mixtures (published protocol).
    eval_out = tmp_path / "eval"
    eval_args = common_args(
        eval_out, classifier_ckpt, device, data_folder=tiny_esc50, pretrained_interpreter=psi
    )
    results = load_script("eval").main(
        [str(HPARAMS / "piq_cnn14.yaml")] + eval_args + ["--overlap_type", "mixtures"]
    )
    assert list(results) == ["mixtures"]
    mixtures = json.loads((eval_out / "mixtures" / "test_metrics.json").read_text())
    assert mixtures["n_samples"] == 20.0 and set(mixtures) == set(metrics)


def _drop_key(args: list[str], key: str) -> list[str]:
    """Command-line ``args`` without ``--key value``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == f"--{key}":
            skip = True
        else:
            out.append(a)
    return out
