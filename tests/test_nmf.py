"""The NMF dictionary of L2I: decomposition, masks, published checkpoints, the recipe."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.L2I import NMFDecoderAudio

from audio_interpretability.features import Frontend
from audio_interpretability.nmf import (
    component_mask,
    decompose,
    dictionary,
    load_nmf_decoder,
    reconstruction_error,
)

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "nmf.yaml"
RECIPE = ROOT / "recipes" / "ESC50" / "interpret" / "train_nmf.py"
TINY = ["--sample_rate", "16000", "--K", "8", "--batch_size", "5", "--lr", "0.0003",
        "--train_fold_nums", "[1, 2]", "--save_period", "1", "--num_threads", "0",
        "--device", "cpu", "--noprogressbar"]  # fmt: skip


def synthetic_spectrogram(seed: int = 0) -> torch.Tensor:
    """log1p|STFT| (2, frames, 513) of a chirp and a tone over noise (seeded, own RNG)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(16000) / 16000.0
    chirp = torch.sin(2 * math.pi * (300 * t + 1500 * t**2))
    tone = torch.sin(2 * math.pi * 880 * t) * (t > 0.5)
    wavs = torch.stack([chirp, tone]) + 0.05 * torch.randn(2, 16000, generator=g)
    return Frontend(sample_rate=16000)(wavs).X


def random_dictionary(bins: int, K: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(bins, K, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ decompose
@pytest.mark.parametrize("loss", ["euclidean", "kl"])
def test_error_falls_with_iterations_and_factors_stay_nonnegative(loss):
    X = synthetic_spectrogram()  # (2, 87, 513)
    W = X[:, ::8].reshape(-1, 513).t()  # (513, 22): every 8th frame of both clips as atoms
    iters = [0, 1, 5, 25, 100]
    errors = []
    for n_iter in iters:
        H, Xhat = decompose(X, W, n_iter=n_iter, loss=loss)
        assert H.shape == (2, W.shape[1], X.shape[1]) and Xhat.shape == X.shape
        assert (H >= 0).all() and (Xhat >= 0).all()
        errors.append(reconstruction_error(X, Xhat))
    errors = torch.stack(errors)  # (iters, B)
    assert (errors[1:] <= errors[:-1] * (1 + 1e-5)).all(), errors
    assert (errors[-1] < 0.6 * errors[0]).all(), errors


@pytest.mark.parametrize("loss", ["euclidean", "kl"])
def test_recovers_known_activations(loss):
    g = torch.Generator().manual_seed(1)
    W = torch.rand(64, 5, generator=g)
    H = torch.rand(3, 5, 30, generator=g)
    X = (W @ H).transpose(1, 2)  # (3, 30, 64) = (W H)^T
    out = decompose(X, W, n_iter=3000, loss=loss)
    assert (out.H - H).abs().max() < 1e-2  # H in [0, 1)
    assert reconstruction_error(X, out.Xhat).max() < 1e-6


def test_warm_start_and_batch_consistency():
    X = synthetic_spectrogram()
    W = random_dictionary(513, 6)
    batched = decompose(X, W, n_iter=20)
    single = decompose(X[1:], W, n_iter=20)
    torch.testing.assert_close(batched.H[1:], single.H)
    # 10 + 10 iterations from the 10-iteration result = 20 iterations
    half = decompose(X, W, n_iter=10)
    torch.testing.assert_close(decompose(X, W, n_iter=10, H0=half.H).H, batched.H)


@pytest.mark.parametrize(
    "X, W, kwargs, match",
    [
        (-torch.ones(1, 4, 8), torch.ones(8, 2), {}, "X has negative values"),
        (torch.ones(4, 8), torch.ones(8, 2), {}, r"X\[None\]"),
        (torch.ones(1, 4, 8), torch.ones(9, 2), {}, "8 frequency bins but W has 9"),
        (torch.ones(1, 4, 8), -torch.ones(8, 2), {}, "W has negative values"),
        (torch.ones(1, 4, 8), torch.ones(8, 2), {"loss": "is"}, "loss must be one of"),
        (torch.ones(1, 4, 8), torch.ones(8, 2), {"n_iter": -1}, "n_iter must be"),
        (torch.ones(1, 4, 8), torch.ones(8, 2), {"H0": torch.ones(1, 3, 4)}, "H0 must be"),
        (torch.full((1, 4, 8), float("nan")), torch.ones(8, 2), {}, "NaN"),
    ],
)
def test_clear_errors(X, W, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose(X, W, **kwargs)


# ------------------------------------------------------------------ L2I masks
def test_component_mask_is_the_published_formula():
    W = random_dictionary(513, 6)
    H = torch.rand(2, 6, 40, generator=torch.Generator().manual_seed(3))
    L = [1, 4]
    mask = component_mask(W, H, torch.tensor(L))  # (2, 40, 513)
    for b in range(2):  # published: W[:, L] @ H[L, :] / (W @ H + eps), (bins, frames)
        expected = W[:, L] @ H[b, L, :] / (W @ H[b] + 1e-10)
        torch.testing.assert_close(mask[b], expected.t())
    rest = torch.ones(2, 6, dtype=torch.bool)
    rest[:, L] = False
    torch.testing.assert_close(mask + component_mask(W, H, rest), torch.ones_like(mask))
    assert ((mask >= 0) & (mask <= 1)).all()
    with pytest.raises(ValueError, match="components must be"):
        component_mask(W, H, torch.ones(3, 6, dtype=torch.bool))


# ------------------------------------------------------------------ published checkpoints
def published_decoder(path: Path, K: int = 4) -> NMFDecoderAudio:
    """A decoder as SpeechBrain's checkpointer writes it (torch.save of the state dict); W
    gets negative entries too (the parameter is unconstrained, the ReLU makes it >= 0)."""
    decoder = NMFDecoderAudio(n_comp=K, n_freq=513, device="cpu")
    with torch.no_grad():
        decoder.W.normal_(generator=torch.Generator().manual_seed(7))
    torch.save(decoder.state_dict(), path)
    return decoder


def test_published_checkpoint_loads_through_the_yaml_key(tmp_path):
    reference = published_decoder(tmp_path / "nmf_decoder.ckpt")
    overrides = {"data_folder": str(tmp_path), "K": 4,
                 "nmf_decoder_path": str(tmp_path / "nmf_decoder.ckpt")}  # fmt: skip
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    decoder = load_nmf_decoder(hparams["nmf_decoder_path"], hparams["nmf_decoder"])
    H = torch.rand(2, 4, 30)
    torch.testing.assert_close(dictionary(decoder), reference.return_W(), atol=1e-6, rtol=0)
    torch.testing.assert_close(decoder(H), reference(H), atol=1e-6, rtol=0)
    # the folder holding it, and the bare dictionary of save_nmfdictionary, load too
    load_nmf_decoder(tmp_path, NMFDecoderAudio(4, 513))
    torch.save(reference.return_W().detach(), tmp_path / "nmf_dictionary.pt")
    bare = load_nmf_decoder(tmp_path / "nmf_dictionary.pt", NMFDecoderAudio(4, 513))
    torch.testing.assert_close(bare(H), reference(H), atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="--K"):
        load_nmf_decoder(tmp_path / "nmf_decoder.ckpt", NMFDecoderAudio(5, 513))
    with pytest.raises(FileNotFoundError, match="model-hub id"):
        load_nmf_decoder("speechbrain/PIQ-ESC50/nmf_decoder.ckpt", decoder)
    torch.save({"weight": torch.ones(2)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an NMF decoder"):
        load_nmf_decoder(tmp_path / "other.ckpt", decoder)


# ------------------------------------------------------------------ the recipe
def run_recipe(argv: list[str]) -> dict:
    module = load_script("train_nmf", RECIPE)
    return module.main([str(YAML), *argv])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_recipe_trains_checkpoints_and_lowers_the_test_error(tmp_path, tiny_esc50):
    def run(name: str, epochs: int, *extra: str) -> dict:
        out = tmp_path / name
        argv = ["--data_folder", tiny_esc50, "--output_folder", str(out),
                "--number_of_epochs", str(epochs), *TINY, *extra]  # fmt: skip
        stats = run_recipe(argv)
        assert stats == read_json(out / "test_metrics.json")
        assert stats["n_samples"] == 10.0
        return stats

    init = run("init", 0)  # the same seed: the initial weights of the trained run
    trained = run("trained", 1)
    out = tmp_path / "trained"
    assert trained["mse"] < 0.9 * init["mse"], (init, trained)
    assert trained["mse_decompose"] < trained["mse"]  # 100 updates beat the encoder's guess
    (ckpt,) = (out / "save").glob("CKPT+*")
    assert {"nmf_decoder.ckpt", "nmf_encoder.ckpt", "optimizer.ckpt"} <= {
        p.name for p in ckpt.iterdir()
    }
    state = torch.load(out / "save" / "nmf_decoder.ckpt", weights_only=True)
    assert set(state) == {"W"} and state["W"].shape == (513, 8)
    torch.testing.assert_close(state["W"], torch.load(ckpt / "nmf_decoder.ckpt")["W"])
    assert (out / "nmf_rec" / "epoch_1.png").is_file() and (out / "nmf_test.png").is_file()

    # resume: the finished run is not trained again, the same checkpoint is tested
    assert run("trained", 1) == trained
    # a trained decoder given by the YAML key is the starting point of a new run
    started = run("started", 0, "--nmf_decoder_path", str(out / "save" / "nmf_decoder.ckpt"))
    assert started["mse_decompose"] == pytest.approx(trained["mse_decompose"], rel=1e-5)


def test_recipe_spectrogram_is_the_frontends(tmp_path):
    with open(YAML, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {"data_folder": str(tmp_path), "sample_rate": 16000})
    wavs = torch.randn(2, 8000)
    X = torch.log1p(hp["compute_stft_mag"](hp["compute_stft"](wavs)))
    torch.testing.assert_close(X, Frontend(sample_rate=16000)(wavs).X)
