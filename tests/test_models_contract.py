"""Contract tests shared by every classifier backbone (CNN14, FocalNet, ViT), in tiny configs.

Each backbone is wrapped in ``AudioClassifier(backbone, head)`` and fed the log1p linear
spectrogram X of real (seeded, synthetic) 1 s clips, exactly as interpreters do. Also tests
the shared spectrogram -> image helpers used by the image backbones.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from audio_interpretability.features import Frontend
from audio_interpretability.models import AudioClassifier, CosineHead, LinearHead
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.focalnet import FocalNet
from audio_interpretability.models.image_input import (
    DropPath,
    image_to_spectrogram,
    spectrogram_to_image,
)
from audio_interpretability.models.vit import ViT

N_CLASSES = 5
BATCH = 3
N_FRAMES = 87  # 1 s at 16 kHz, hop 186 samples


@dataclass
class Case:
    """A tiny backbone, its head, and its documented map / saliency shapes (batch excluded)."""

    build: Callable[[], torch.nn.Module]
    head: type
    embedding_dim: int
    map_shapes: list
    saliency_shape: tuple


CASES = {
    # CNN14 maps: blocks 6, 5, 4, 3 at (T // 32, M // 32), (T // 32, M // 32), (T // 16, M // 16),
    # (T // 8, M // 8) for T = 87 frames, M = 32 mel bins; channels (emb_dim, 16b, 8b, 4b), b=8.
    "cnn14": Case(
        build=lambda: Cnn14(mel_bins=32, emb_dim=64, base_channels=8, n_fft=1024),
        head=LinearHead,
        embedding_dim=64,
        map_shapes=[(64, 2, 1), (128, 2, 1), (64, 5, 2), (32, 10, 4)],
        saliency_shape=(2, 1),
    ),
    # FocalNet tiny-cpu: 64x64 image, patch 4, embed_dim 24 -> stage s: (24 * 2**s, 16 / 2**s, .)
    "focalnet": Case(
        build=lambda: FocalNet.from_config("tiny-cpu"),
        head=CosineHead,
        embedding_dim=192,
        map_shapes=[(24, 16, 16), (48, 8, 8), (96, 4, 4), (192, 2, 2)],
        saliency_shape=(2, 2),
    ),
    # ViT tiny-cpu: 64x64 image, patch 8 -> 64 patches + CLS, 4 heads, depth 4.
    "vit": Case(
        build=lambda: ViT.from_config("tiny-cpu"),
        head=CosineHead,
        embedding_dim=64,
        map_shapes=[(4, 65, 65)] * 4,
        saliency_shape=(8, 8),
    ),
}


@pytest.fixture(scope="module")
def spectrogram() -> torch.Tensor:
    """(3, 87, 513) log1p magnitude of three different seeded 1 s clips (tone + noise)."""
    gen = torch.Generator().manual_seed(1234)
    t = torch.arange(16000) / 16000
    freqs = torch.tensor([[440.0], [1500.0], [3000.0]])
    wavs = 0.5 * torch.sin(2 * torch.pi * freqs * t) + 0.1 * torch.randn(3, 16000, generator=gen)
    wavs[1, :8000] = 0.0  # an event in the second half only
    X = Frontend(sample_rate=16000)(wavs).X
    assert X.shape == (BATCH, N_FRAMES, 513)
    return X


def build_classifier(name: str, device: torch.device) -> AudioClassifier:
    case = CASES[name]
    backbone = case.build()
    return AudioClassifier(backbone, case.head(backbone.embedding_dim, N_CLASSES)).to(device)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shapes_and_finite(name, spectrogram, device):
    model = build_classifier(name, device).eval()
    X = spectrogram.to(device)
    with torch.no_grad():
        plain = model(X)
        with_maps = model(X, return_maps=True)
    assert plain.logits.shape == (BATCH, N_CLASSES)
    assert plain.embedding.shape == (BATCH, CASES[name].embedding_dim)
    assert model.embedding_model.embedding_dim == CASES[name].embedding_dim
    assert plain.maps == ()
    assert torch.isfinite(plain.logits).all() and torch.isfinite(plain.embedding).all()
    # Asking for the maps must not change the prediction (ViT switches attention paths).
    torch.testing.assert_close(with_maps.logits, plain.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_maps.embedding, plain.embedding, atol=1e-5, rtol=1e-5)
    # Different clips give different outputs (the model really reads its input).
    assert not torch.allclose(plain.embedding[0], plain.embedding[1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_maps_have_documented_shapes(name, spectrogram, device):
    model = build_classifier(name, device).eval()
    with torch.no_grad():
        maps = model(spectrogram.to(device), return_maps=True).maps
    assert [tuple(m.shape) for m in maps] == [(BATCH, *s) for s in CASES[name].map_shapes]
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saliency_shape_finite_non_negative(name, spectrogram, device):
    model = build_classifier(name, device).eval()
    with torch.no_grad():
        maps = model(spectrogram.to(device), return_maps=True).maps
        saliency = model.embedding_model.saliency(maps)
    assert saliency.shape == (BATCH, *CASES[name].saliency_shape)
    assert torch.isfinite(saliency).all()
    assert (saliency >= 0).all()
    assert saliency.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_parameter_gets_a_gradient(name, spectrogram, device):
    model = build_classifier(name, device).train()
    targets = torch.tensor([0, 3, 1], device=device)
    out = model(spectrogram.to(device))
    F.cross_entropy(out.logits, targets).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    not_finite = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient for {not_finite}"
    zero = [n for n, p in params if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_per_item(name, spectrogram, device):
    model = build_classifier(name, device).eval()
    X = spectrogram.to(device)
    with torch.no_grad():
        batched = model(X, return_maps=True)
        for i in range(BATCH):
            single = model(X[i : i + 1], return_maps=True)
            torch.testing.assert_close(
                single.logits, batched.logits[i : i + 1], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                single.embedding, batched.embedding[i : i + 1], atol=1e-5, rtol=1e-5
            )
            for m_single, m_batched in zip(single.maps, batched.maps, strict=True):
                torch.testing.assert_close(m_single, m_batched[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("return_maps", [False, True])
def test_gradient_reaches_the_input_spectrogram(name, return_maps, spectrogram, device):
    model = build_classifier(name, device).eval()
    X = spectrogram.to(device).clone().requires_grad_(True)
    logits = model(X, return_maps=return_maps).logits
    logits[0, 2].backward()
    assert X.grad is not None and torch.isfinite(X.grad).all()
    assert X.grad[0].abs().sum() > 0
    # In eval mode item 0's logit depends on item 0 only.
    assert X.grad[1:].abs().sum() == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_fully_masked_input_stays_finite(name, spectrogram, device):
    """Interpreters feed (1 - M) * X with M = 1 (all zeros): no NaN, no Inf."""
    model = build_classifier(name, device).eval()
    with torch.no_grad():
        out = model(torch.zeros_like(spectrogram, device=device), return_maps=True)
        saliency = model.embedding_model.saliency(out.maps)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    assert torch.isfinite(saliency).all()


def test_image_orientation_is_time_by_frequency():
    """Energy early in time / low in frequency lands at the top / left of the image."""
    X = torch.zeros(1, 87, 513)
    X[:, :20, :100] = 1.0
    image = spectrogram_to_image(X, size=64)
    assert image.shape == (1, 1, 64, 64)
    rows, cols = image[0, 0].sum(dim=1), image[0, 0].sum(dim=0)
    assert rows[:10].min() > 0 and rows[20:].abs().max() < 1e-6
    assert cols[:10].min() > 0 and cols[20:].abs().max() < 1e-6
    # Bilinear + antialias keeps values in range and preserves the mean closely.
    assert image.min() >= 0 and image.max() <= 1 + 1e-6
    assert abs(image.mean().item() - X.mean().item()) < 0.01
    # Three channels are identical copies.
    three = spectrogram_to_image(X, size=64, channels=3)
    assert torch.equal(three[:, 0], three[:, 2]) and torch.equal(three[:, :1], image)


def test_image_to_spectrogram_roundtrip_of_a_constant_map():
    saliency = torch.full((2, 7, 7), 0.25)
    back = image_to_spectrogram(saliency, n_frames=87, n_bins=513)
    assert back.shape == (2, 87, 513)
    torch.testing.assert_close(back, torch.full_like(back, 0.25))


def test_image_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match="unsqueeze"):
        spectrogram_to_image(torch.rand(87, 513))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        image_to_spectrogram(torch.rand(2, 1, 7, 7), 87, 513)


def test_drop_path_drops_whole_samples_in_training_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 5, 3, generator=gen) + 0.5
    drop = DropPath(0.5).train()
    y = drop(x)
    ratio = y / x  # (64, 5, 3): 0 or 1 / (1 - p) = 2, constant within a sample
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert set(per_sample[:, 0].unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
