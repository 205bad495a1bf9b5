"""AMT: quantile thresholding, mask placement, the overlap helpers, and the recipe end to end."""

import json
import math
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from audio_interpretability.brains.amt import InterpreterESC50Brain, quantile_mask
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.data.overlap import overlap_pairs, overlap_weights
from audio_interpretability.data.synthetic import class_params
from audio_interpretability.models import Backbone, BackboneOutput
from audio_interpretability.models.focalnet import FocalNet
from audio_interpretability.models.vit import ViT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "ESC50" / "interpret"))
import interpret_amt  # noqa: E402


# ------------------------------------------------------------------------------ thresholding
@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_quantile_mask_keeps_requested_fraction(quantile):
    g = torch.Generator().manual_seed(1)
    saliency = torch.rand(3, 37, 41, generator=g)
    saliency[1] = torch.round(saliency[1] * 4)  # heavy ties: only 5 distinct values
    saliency[2] = 0.0  # a flat map
    mask = quantile_mask(saliency, quantile)
    n = 37 * 41
    assert mask.shape == saliency.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = mask.reshape(3, -1).sum(dim=1)
    assert torch.all((kept - (1 - quantile) * n).abs() <= 1.0), kept
    for b in range(3):  # the kept bins are the most salient ones
        on, off = saliency[b][mask[b] == 1], saliency[b][mask[b] == 0]
        if on.numel() and off.numel():
            assert on.min() >= off.max()


def test_quantile_mask_without_ties_is_a_threshold():
    saliency = torch.randn(2, 30, 20, generator=torch.Generator().manual_seed(2))
    mask = quantile_mask(saliency, 0.8)
    kth = saliency.reshape(2, -1).sort(dim=1, descending=True).values[:, 119]  # k = 120
    assert torch.equal(mask, (saliency >= kth[:, None, None]).float())


def test_quantile_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="quantile"):
        quantile_mask(torch.rand(1, 4, 4), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        quantile_mask(torch.full((1, 4, 4), float("nan")), 0.5)


# ------------------------------------------------------------------------------ make_mask
class RegionBackbone(Backbone):
    """Backbone stub whose saliency is 1 on a fixed (time, frequency) box of a grid."""

    def __init__(self, grid=None, box=(slice(None), slice(None))):
        super().__init__()
        self.embedding_dim = 4
        self.proj = torch.nn.Linear(1, 4)
        self.grid, self.box = grid, box

    def input_from_spectrogram(self, X):
        return X

    def forward(self, x, return_maps=False):
        embedding = self.proj(x.mean(dim=(1, 2))[:, None])  # (B, 4)
        return BackboneOutput(embedding, (x,) if return_maps else ())

    def saliency(self, maps, scale=1.0):
        x = maps[0]
        size = self.grid or x.shape[1:]
        out = torch.zeros(x.shape[0], *size)
        out[(slice(None), *self.box)] = scale
        return out


def make_brain(backbone, out, quantile, saliency_options=None):
    return InterpreterESC50Brain.from_backbone(
        backbone, 3, out, quantile, saliency_options, random_baseline=True
    )


def test_mask_is_the_salient_region(tmp_path):
    # 1 s at 16 kHz: X is (B, 87, 513). Saliency 1 on frames 10-29 x bins 100-149 (1000 bins).
    box = (slice(10, 30), slice(100, 150))
    brain = make_brain(RegionBackbone(box=box), tmp_path, quantile=1 - 1000 / (87 * 513))
    wavs = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    X_int, mask, _, X = brain.interpret_computation_steps(wavs)
    expected = torch.zeros(2, 87, 513)
    expected[(slice(None), *box)] = 1.0
    assert torch.equal(mask, expected)
    assert torch.equal(X_int, expected * X)


def test_coarse_saliency_lands_on_its_cell(tmp_path):
    # A 4 x 4 grid with the (time 1, freq 3) cell hot: after the bilinear resize the mask must
    # lie in that cell's footprint on the (87, 513) grid (time first, frequency second).
    backbone = RegionBackbone(grid=(4, 4), box=(1, 3))
    brain = make_brain(backbone, tmp_path, quantile=0.98, saliency_options={"scale": 5.0})
    _, mask, _, X = brain.interpret_computation_steps(torch.randn(1, 16000))
    frames, bins = torch.nonzero(mask[0], as_tuple=True)
    assert mask.shape == X.shape
    assert frames.numel() == round(0.02 * 87 * 513)
    assert 87 / 4 * 1 <= frames.min() and frames.max() < 87 / 4 * 2
    assert 513 / 4 * 3 <= bins.min()


@pytest.mark.parametrize(
    "backbone, options",
    [
        (
            lambda: FocalNet(img_size=32, embed_dim=8, depths=(1, 1, 1, 1)),
            {"stages": [-2, -1], "aggregation": "mean"},
        ),
        (
            lambda: ViT(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2),
            {"layers": [-1], "method": "rollout"},
        ),
    ],
    ids=["focalnet", "vit"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_real_backbones_batched_equals_per_item(backbone, options, seed, tmp_path):
    torch.manual_seed(seed)  # weights independent of the order tests run in
    brain = make_brain(backbone().eval(), tmp_path, quantile=0.9, saliency_options=options)
    wavs = torch.randn(2, 12000, generator=torch.Generator().manual_seed(3))
    X_int, mask, _, X = brain.interpret_computation_steps(wavs)
    assert mask.shape == X.shape == (2, 65, 513)
    assert torch.all((mask.reshape(2, -1).sum(1) - 0.1 * 65 * 513).abs() <= 1)
    with torch.no_grad():
        spec = brain.preprocess(wavs)
        batched = brain.make_mask(spec, brain.classifier_forward(spec.X, return_maps=True))
        assert torch.equal(batched.mask, mask)
        for i in range(2):
            spec_i = brain.preprocess(wavs[i : i + 1])
            single = brain.make_mask(spec_i, brain.classifier_forward(spec_i.X, return_maps=True))
            saliency_i = single.extras["saliency"][0]
            assert torch.allclose(saliency_i, batched.extras["saliency"][i], atol=1e-4)
            # Float noise between batch sizes may only flip bins tied at the threshold.
            assert (single.mask[0] != mask[i]).float().mean() < 0.005


# ------------------------------------------------------------------------------ overlap helpers
def test_overlap_weights_and_pairs():
    w1, w2 = overlap_weights(torch.tensor([6, 4]), 6, "mixture", (0.8, 0.2))
    assert torch.allclose(w1[0], torch.full((6,), 0.8)) and torch.allclose(
        w2[0], torch.full((6,), 0.2)
    )
    assert torch.equal(w1[1, 4:], torch.zeros(2))  # padding stays silent
    c1, c2 = overlap_weights(torch.tensor([6]), 6, "concat")
    assert c1.tolist() == [[1, 1, 1, 0, 0, 0]] and c2.tolist() == [[0, 0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="overlap_type"):
        overlap_weights(torch.tensor([6]), 6, "sum")

    labels = ["a", "a", "b", "c", "c"]
    pairs = overlap_pairs(labels)
    assert [i for i, _ in pairs] == list(range(5))
    assert all(labels[i] != labels[j] for i, j in pairs)
    with pytest.raises(ValueError, match="two different classes"):
        overlap_pairs(["a", "a"])


# ------------------------------------------------------------------------------ the recipe
def export_random_classifier(hparams_file, folder, overrides):
    """Build the YAML's classifier with random weights and export it like the classifier recipe."""
    from hyperpyyaml import load_hyperpyyaml

    with open(hparams_file) as f:
        hp = load_hyperpyyaml(f, {"data_folder": "unused", "out_n_neurons": 5, **overrides})
    folder.mkdir(parents=True)
    encoder = CategoricalEncoder()
    for target in range(5):
        encoder.enforce_label(class_params(target)["category"], target)
    encoder.save(str(folder / "le.txt"))
    export_classifier(
        hp["embedding_model"],
        hp["classifier"],
        str(folder),
        label_encoder_file=str(folder / "le.txt"),
    )
    return hp["embedding_model"].state_dict()


def finite_numbers(path):
    values = json.loads(Path(path).read_text())
    assert values and all(isinstance(v, float) and math.isfinite(v) for v in values.values()), (
        values
    )
    return values


# Tiny backbones (given on the command line, as users override YAML sizes) keep this fast.
SIZES = {
    "focalnet": {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1]},
    "vit": {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
}


@pytest.mark.parametrize(
    "model, extra",
    [
        ("focalnet", ["--overlap_test_type", "mixture"]),
        ("vit", ["--overlap_test_type", "concat", "--quantile", "0.8",
                 "--saliency_options", "{layers: [-2, -1], method: rollout}"]),
    ],
)  # fmt: skip
def test_recipe_end_to_end(model, extra, tiny_esc50, tmp_path):
    hparams_file = str(ROOT / "hparams" / f"amt_{model}.yaml")
    pretrained = tmp_path / "pretrained"
    state = export_random_classifier(hparams_file, pretrained, SIZES[model])
    sizes = [arg for k, v in SIZES[model].items() for arg in (f"--{k}", str(v))]
    out = tmp_path / "out"
    brain = interpret_amt.main(
        [hparams_file, "--data_folder", tiny_esc50, "--output_folder", str(out),
         "--pretrained_folder", str(pretrained), "--out_n_neurons", "5", "--batch_size", "5",
         "--n_saved_interpretations", "1", "--device", "cpu", "--noprogressbar", *sizes, *extra]
    )  # fmt: skip
    loaded = brain.hparams.model.embedding_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # the checkpoint was used
    assert brain.label_encoder.lab2ind == {class_params(t)["category"]: t for t in range(5)}

    metrics = finite_numbers(out / "test_metrics.json")
    quantile = 0.8 if "0.8" in extra else 0.9
    assert metrics["n_samples"] == 10.0  # fold 5 of tiny_esc50: 5 classes x 2 clips
    assert abs(metrics["mask_fraction"] - (1 - quantile)) < 1e-3
    # A binary mask keeping k = (1 - quantile) N of N bins: Gini index (SPS) 1 - k / N, entropy
    # (COMP) ln k; the random baseline permutes the same values, so it scores the same.
    n_bins = 87 * 513
    kept = round((1 - quantile) * n_bins)
    assert abs(metrics["SPS"] - (1 - kept / n_bins)) < 1e-3
    assert abs(metrics["COMP"] - math.log(kept)) < 1e-3
    assert metrics["random_SPS"] == pytest.approx(metrics["SPS"], abs=1e-6)
    assert metrics["random_COMP"] == pytest.approx(metrics["COMP"], abs=1e-4)
    for key in ("accuracy", "fid_in", "random_fid_in"):
        tenths = metrics[key] * 10  # 10 clips: multiples of 0.1
        assert 0.0 <= metrics[key] <= 1.0 and abs(tenths - round(tenths)) < 1e-6
    assert 0.0 <= metrics["AI"] <= 100.0 and 0.0 <= metrics["AD"] <= 100.0
    assert -1.0 <= metrics["FF"] <= 1.0 and -1.0 <= metrics["in_drop"] <= 1.0
    assert 0.0 <= metrics["loc_iou"] <= metrics["loc_precision"] <= 1.0  # IoU <= precision

    (clip,) = (out / "interpretations").iterdir()  # n_saved_interpretations = 1
    assert "_true-" in clip.name and "_pred-" in clip.name
    original, sr = sf.read(clip / "original.wav")
    interpretation, _ = sf.read(clip / "interpretation.wav")
    assert sr == 16000 and original.shape == interpretation.shape == (16000,)
    assert (clip / f"{clip.name}.png").stat().st_size > 0

    overlap = finite_numbers(out / "overlap_metrics.json")
    assert overlap["n_samples"] == 10.0
    for key in ("pred_is_s1", "pred_is_s2", "mask_on_s1_event", "mask_on_s2_event",
                "mask_on_pred_event", "s1_event_area", "FF"):  # fmt: skip
        assert 0.0 <= overlap[key] <= 1.0 or key == "FF"
    # the two event regions are disjoint (each dominates the rest of the mixture by 6 dB) and
    # both exist: the mask's shares on them add up to at most 1
    assert overlap["mask_on_s1_event"] + overlap["mask_on_s2_event"] <= 1.0 + 1e-6
    assert overlap["s1_event_area"] > 0 and overlap["s2_event_area"] > 0
    (pair,) = (out / "overlap").iterdir()
    for name in ("original", "s1", "s2", "interpretation"):  # original: the mixture
        wav, _ = sf.read(pair / f"{name}.wav")
        assert wav.shape == (16000,)
    assert (pair / f"{pair.name}.png").stat().st_size > 0
