"""Sanity checks (audio_interpretability.sanity): hand-checkable values of the similarity
measures, the curves and their areas, the layer groups of every backbone, and the cascading
randomisation of a tiny CNN14 under L-MAC (the masks must move when the classifier does)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability import sanity
from audio_interpretability.brains.interpreter import InterpreterBrain, MaskOutput
from audio_interpretability.data.synthetic import synthesize_clip
from audio_interpretability.models.base import AudioClassifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import CosineHead, LinearHead

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ similarity
def test_spearman_hand_values():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    assert sanity.spearman_correlation(a, a).tolist() == [1.0, 1.0]
    assert sanity.spearman_correlation(a, -a).tolist() == [-1.0, -1.0]
    # monotone transforms keep the ranks
    assert sanity.spearman_correlation(a, torch.exp(a)).tolist() == [1.0, 1.0]
    # ranks (1, 2, 3, 4) vs (2, 1, 4, 3): 1 - 6 * 4 / (4 * 15) = 0.6
    b = torch.tensor([[2.0, 1.0, 4.0, 3.0]])
    assert sanity.spearman_correlation(a[:1], b).item() == pytest.approx(0.6)


def test_spearman_constant_maps():
    zeros = torch.zeros(1, 3, 3)
    assert sanity.spearman_correlation(zeros, zeros).item() == 1.0
    assert sanity.spearman_correlation(zeros, torch.rand(1, 3, 3)).item() == 0.0


def test_ssim_hand_values():
    a = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1))
    assert sanity.ssim(a, a).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # constant maps c1, c2 (no variance): SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1)
    c1, c2, C1 = 0.2, 0.6, 0.01**2
    value = sanity.ssim(torch.full((1, 12, 12), c1), torch.full((1, 12, 12), c2)).item()
    assert value == pytest.approx((2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1), rel=1e-4)
    # small maps use a smaller window; an anti-correlated map scores below 0
    assert sanity.ssim(a[:, :5, :5], 1 - a[:, :5, :5]).max() < 0


# ------------------------------------------------------------------ curves
def one_bin_model(frame: int, bin_: int):
    """Logits of a model that looks at one bin only: class 1 when it is loud."""

    def classify(X):
        loud = X[:, frame, bin_]
        return torch.stack([torch.zeros_like(loud), 4.0 * loud], dim=1)

    return classify


def test_deletion_insertion_one_bin():
    classify = one_bin_model(1, 2)
    X = torch.ones(2, 3, 4)
    good = torch.zeros(2, 3, 4)
    good[:, 1, 2] = 1.0  # the bin the model reads ranked first
    bad = 1.0 - good  # ranked last
    p1, half = torch.sigmoid(torch.tensor(4.0)).item(), 0.5
    out = sanity.deletion_insertion_curves(classify, X, torch.cat([good[:1], bad[:1]]), 4)
    assert out.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # good: deleted at the first step, inserted at the first step
    assert out.deletion[0].tolist() == pytest.approx([p1, half, half, half, half])
    assert out.insertion[0].tolist() == pytest.approx([half, p1, p1, p1, p1])
    # bad: the bin goes last
    assert out.deletion[1].tolist() == pytest.approx([p1, p1, p1, p1, half])
    assert out.insertion[1].tolist() == pytest.approx([half, half, half, half, p1])
    # trapezoid: good deletion = 0.25 (p1 + half) / 2 + 0.75 half
    assert out.deletion_auc[0].item() == pytest.approx(0.125 * (p1 + half) + 0.75 * half)
    assert out.deletion_auc[0] < out.deletion_auc[1]
    assert out.insertion_auc[0] > out.insertion_auc[1]


def test_curve_auc_constant_and_linear():
    fractions = torch.linspace(0, 1, 11)
    assert sanity.curve_auc(torch.full((2, 11), 0.7), fractions).tolist() == pytest.approx(
        [0.7, 0.7]
    )
    assert sanity.curve_auc(fractions[None], fractions).item() == pytest.approx(0.5)


def test_relevance_order_is_a_permutation_with_seeded_ties():
    mask = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 0.5]]])
    ranks = sanity.relevance_order(mask, torch.Generator().manual_seed(3))
    assert sorted(ranks.flatten().tolist()) == [0, 1, 2, 3, 4]
    assert set(ranks[0, 0, [1, 3]].tolist()) == {0, 1} and ranks[0, 0, 4] == 2
    again = sanity.relevance_order(mask, torch.Generator().manual_seed(3))
    assert torch.equal(ranks, again)


# ------------------------------------------------------------------ layer groups
def tiny_cnn14() -> AudioClassifier:
    return AudioClassifier(Cnn14(emb_dim=16, base_channels=1), LinearHead(16, 3)).eval()


def test_layer_groups_cnn14():
    names = [g.name for g in sanity.layer_groups(tiny_cnn14())]
    blocks = [f"embedding_model.conv_block{k}" for k in range(6, 0, -1)]
    assert names == ["classifier", *blocks, "embedding_model.norm0"]


def test_layer_groups_vit_and_focalnet():
    from audio_interpretability.models.focalnet import FocalNet
    from audio_interpretability.models.vit import ViT

    vit = AudioClassifier(ViT.from_config("tiny-cpu"), CosineHead(64, 3))  # depth 4
    names = [g.name for g in sanity.layer_groups(vit)]
    assert names[0] == "classifier" and names[-1] == "embedding_model"  # cls_token, pos_embed
    assert names.index("embedding_model.blocks.3") < names.index("embedding_model.blocks.0")
    assert names.index("embedding_model.blocks.0") < names.index("embedding_model.patch_embed")
    focal = AudioClassifier(FocalNet.from_config("tiny-cpu"), CosineHead(192, 3))
    names = [g.name for g in sanity.layer_groups(focal)]
    assert names.index("embedding_model.stages.3") < names.index("embedding_model.stages.0")
    for model in (vit, focal):  # every stage changes the outputs; the original stays intact
        X = torch.rand(2, 87, 513)
        before = model.eval()(X).logits
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for _, randomized in sanity.randomized_classifiers(model, seed=0):
            assert torch.isfinite(randomized(X).logits).all()
        assert not torch.allclose(randomized(X).logits, before)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_randomized_classifiers_cumulative_seeded_and_copy():
    model = tiny_cnn14()
    with torch.no_grad():  # as if trained: no tensor at its initial value (norm layers too)
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.rand(v.shape))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    for name, randomized in sanity.randomized_classifiers(model, seed=5):
        changed = {
            k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("embedding") else "")
            for k, v in randomized.state_dict().items()
            if v.is_floating_point() and not torch.equal(v, original[k])
        }
        seen.append(name)
        assert changed == set(seen), (name, changed)  # cumulative, nothing else
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())
    state = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    first = [state(m) for _, m in sanity.randomized_classifiers(model, seed=5)]
    second = [state(m) for _, m in sanity.randomized_classifiers(model, seed=5)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, second) for k in a)
    rng = torch.get_rng_state()
    list(sanity.randomized_classifiers(model, seed=1))
    assert torch.equal(rng, torch.get_rng_state())  # the global stream is left alone
    with pytest.raises(ValueError, match="unknown layer groups"):
        list(sanity.randomized_classifiers(model, groups=["nope"]))


# ------------------------------------------------------------------ on an interpreter
def lmac_hparams(folder) -> dict:
    """lmac_cnn14.yaml at the tiny size: a random CNN14 (base_channels 2, emb_dim 64)."""
    overrides = {
        "data_folder": str(folder), "output_folder": str(folder / "out"), "out_n_neurons": 5,
        "base_channels": 2, "emb_dim": 64, "decoder_width": 16, "num_threads": 0,
        "embedding_model_path": None, "classifier_model_path": None,
    }  # fmt: skip
    torch.manual_seed(0)
    with open(ROOT / "hparams" / "lmac_cnn14.yaml", encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


class BlockMapInterpreter(InterpreterBrain):
    """A gradient-free interpreter that reads the classifier: the channel norm of CNN14's
    block 3 output, upsampled to X and scaled to [0, 1] per clip."""

    needs_maps = True

    def make_mask(self, spec, clf):
        saliency = clf.maps[-1].norm(dim=1)[:, None]  # (B, 1, T // 8, M // 8)
        up = F.interpolate(saliency, size=spec.X.shape[1:], mode="bilinear")[:, 0]
        low = up.amin(dim=(1, 2), keepdim=True)
        high = up.amax(dim=(1, 2), keepdim=True)
        return MaskOutput(mask=(up - low) / (high - low + 1e-12), extras={})


@pytest.fixture(scope="module")
def tiny_brains(tmp_path_factory) -> dict:
    """L-MAC with its random (untrained) decoder, and the block-map interpreter, each on its
    own random tiny CNN14."""
    from audio_interpretability.brains.lmac import LMAC

    brains = {}
    for name, brain_class in (("lmac", LMAC), ("block_map", BlockMapInterpreter)):
        hp = lmac_hparams(tmp_path_factory.mktemp(name))
        brains[name] = brain_class(modules=hp["modules"], hparams=hp, run_opts={"device": "cpu"})
    return brains


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """(3, 16000) synthetic clips of classes 0, 1, 2 (event + background)."""
    parts = [synthesize_clip(k, 1.0, 16000, np.random.default_rng(k)) for k in range(3)]
    return torch.stack(
        [torch.from_numpy(event + background).float() for event, background in parts]
    )


def test_cascading_randomization(tiny_brains, clips):
    brain = tiny_brains["block_map"]
    model = brain.hparams.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stages = sanity.cascading_randomization(brain, clips, seed=0)
    assert [s.group for s in stages[:2]] == ["original", "classifier"]
    assert len(stages) == 1 + len(sanity.layer_groups(model))
    assert all(math.isfinite(s.spearman) and math.isfinite(s.ssim) for s in stages)
    assert stages[0].spearman == pytest.approx(1.0) and stages[0].ssim == pytest.approx(1.0)
    # the head and blocks 6-4 are downstream of block 3: the mask cannot move
    for s in stages[1:5]:
        assert s.spearman == pytest.approx(1.0) and s.ssim == pytest.approx(1.0), s
    # block 3 and below re-initialised: the mask reads another network
    assert stages[-1].spearman < 0.9 and stages[-1].ssim < 0.9
    # the brain interprets with its own classifier again, untouched
    assert brain.hparams.model is model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_cascading_randomization_gradcam_caches_its_layer(tmp_path, clips):
    """Grad-CAM caches its layer of the classifier (and hooks it): the randomised twin must
    hook its own copy of that layer, and the brain keep its own."""
    from audio_interpretability.brains.gradient import GradCAM

    overrides = {
        "data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"), "out_n_neurons": 5,
        "base_channels": 2, "emb_dim": 64, "num_threads": 0, "int_method": "gradcam",
        "gradcam_layer": "embedding_model.conv_block4",
        "embedding_model_path": None, "classifier_model_path": None,
    }  # fmt: skip
    torch.manual_seed(0)
    with open(ROOT / "hparams" / "gradient_cnn14.yaml", encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, overrides)
    brain = GradCAM(modules=hp["modules"], hparams=hp, run_opts={"device": "cpu"})
    before = brain.interpret(clips)[2].mask  # caches the layer of the brain's classifier
    stages = sanity.cascading_randomization(brain, clips, seed=0)
    assert stages[0].spearman == pytest.approx(1.0)
    assert stages[-1].spearman < 0.9
    assert torch.equal(brain.interpret(clips)[2].mask, before)


def test_cascading_randomization_untrained_lmac(tiny_brains, clips):
    """An untrained L-MAC decoder barely reads the maps (its mask is mostly its biases'
    pattern): the check shows it, its masks survive the randomisation of the whole classifier
    far better than those of an interpreter that reads the classifier."""
    lmac = sanity.cascading_randomization(tiny_brains["lmac"], clips, seed=0)[-1]
    block_map = sanity.cascading_randomization(tiny_brains["block_map"], clips, seed=0)[-1]
    assert lmac.spearman < 1.0  # they move a little ...
    assert lmac.spearman > 0.9 > block_map.spearman  # ... far less


def test_deletion_insertion(tiny_brains, clips):
    brain = tiny_brains["lmac"]
    scores = sanity.deletion_insertion(brain, clips, n_steps=4, seed=0)
    assert set(scores) == {
        "deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
    }  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores == sanity.deletion_insertion(brain, clips, n_steps=4, seed=0)


@pytest.mark.parametrize(
    "yaml, sizes",
    [
        ("amt_vit.yaml", {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2,
                          "num_heads": 2}),
        ("amt_focalnet.yaml", {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1]}),
    ],
)  # fmt: skip
def test_sanity_checks_on_amt_vit_and_focalnet(yaml, sizes, tmp_path, clips):
    """Both checks run on the transformer backbones too (AMT, random tiny ViT / FocalNet)."""
    from audio_interpretability.brains.amt import InterpreterESC50Brain

    overrides = {
        "data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"), "out_n_neurons": 5,
        "num_threads": 0, "embedding_model_path": None, "classifier_model_path": None, **sizes,
    }  # fmt: skip
    torch.manual_seed(0)
    with open(ROOT / "hparams" / yaml, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, overrides)
    brain = InterpreterESC50Brain(modules=hp["modules"], hparams=hp, run_opts={"device": "cpu"})
    model = brain.hparams.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wavs = clips[:2]
    stages = sanity.cascading_randomization(brain, wavs, seed=0)
    assert [s.group for s in stages[1:]] == [g.name for g in sanity.layer_groups(model)]
    assert stages[0].spearman == pytest.approx(1.0)
    assert all(math.isfinite(s.spearman) and math.isfinite(s.ssim) for s in stages)
    assert stages[-1].spearman < 1.0
    scores = sanity.deletion_insertion(brain, wavs, n_steps=3)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
