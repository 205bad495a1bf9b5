"""L2I: the published loss and mask, published-layout checkpoints, the recipe and eval.py."""

import json
from pathlib import Path

import helpers
import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.L2I import CNN14PSI_stft_2d, NMFDecoderAudio, Theta

from audio_interpretability.brains.l2i import L2I, THETA_FILE, l2i_loss
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.data.ood import generate_speech_like
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "ESC50" / "interpret"
YAML = ROOT / "hparams" / "l2i_cnn14.yaml"
N_CLASSES = 5
K = 8
FRAMES = 87  # 1 s clips at 16 kHz, hop 11.61 ms
# A tiny CNN14 (emb_dim = 32 * base_channels, as psi needs), K components, 1 s clips.
TINY = {"base_channels": 2, "emb_dim": 64, "out_n_neurons": N_CLASSES, "K": K,
        "theta_frames": FRAMES}  # fmt: skip


def load_script(name: str):
    return helpers.load_script(name, RECIPES / f"{name}.py")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    """Tiny classifier, NMF dictionary and a published-layout L2I (psi + theta), random weights,
    saved as the recipes (and SpeechBrain's checkpointer) save them."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpts")
    paths = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, N_CLASSES), folder)
    paths["nmf"] = str(folder / "nmf_decoder.ckpt")
    torch.save(NMFDecoderAudio(n_comp=K, n_freq=513).state_dict(), paths["nmf"])
    paths["psi"] = str(folder / "psi_model.ckpt")
    torch.save(CNN14PSI_stft_2d(dim=64, K=K).state_dict(), paths["psi"])
    torch.save(Theta(n_comp=K, T=FRAMES, num_classes=N_CLASSES).state_dict(), folder / THETA_FILE)
    return paths


def make_brain(tmp_path, device, ckpts, **overrides) -> L2I:
    values = {
        "data_folder": str(tmp_path / "unused"),
        "output_folder": str(tmp_path / "out"),
        "embedding_model_path": ckpts["embedding_model"],
        "classifier_model_path": ckpts["classifier"],
        "nmf_decoder_path": ckpts["nmf"],
        "num_threads": 0,
        **TINY,
        **overrides,
    }
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)
    return L2I(
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
# The loss: the published compute_objectives, transcribed
# --------------------------------------------------------------------------------------------
def published_objective(reconstructions, time_activations, classification_out, theta_out, X,
                        alpha, beta, classifier_temp):  # fmt: skip
    """SpeechBrain recipes/ESC50/interpret/train_l2i.py::L2I.compute_objectives, the loss lines."""
    X_stft_logpower = X[:, : reconstructions.shape[1], :]
    loss_nmf = ((reconstructions - X_stft_logpower) ** 2).mean()
    loss_nmf = alpha * loss_nmf
    loss_nmf += beta * (time_activations).abs().mean()
    theta_out = -torch.log(theta_out)
    loss_fdi = (F.softmax(classification_out / classifier_temp, dim=1) * theta_out).mean()
    return loss_nmf + loss_fdi


@pytest.mark.parametrize("temp", [1.0, 0.01])
def test_loss_is_the_published_objective(temp):
    gen = torch.Generator().manual_seed(3)
    B, C, T, Fq = 3, 4, 7, 9
    X = torch.rand(B, T + 2, Fq, generator=gen)  # X has more frames than the reconstruction
    leaves = {
        "recon": torch.rand(B, T, Fq, generator=gen),
        "H": torch.rand(B, K, T, generator=gen) - 0.2,
        "logits": torch.randn(B, C, generator=gen),
        "theta": torch.randn(B, C, generator=gen),
    }
    grads = []
    values = []
    for fn in ("ours", "published"):
        x = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        theta_out = x["theta"].softmax(dim=1)
        if fn == "ours":
            loss, terms = l2i_loss(x["logits"], theta_out, x["recon"], X, x["H"],
                                   alpha=10.0, beta=0.8, classifier_temp=temp)  # fmt: skip
            assert set(terms) == {"recons_err", "reg_loss", "fid_loss"}
            assert all(v.shape == (B,) for v in terms.values())
        else:
            loss = published_objective(x["recon"], x["H"], x["logits"], theta_out, X, 10.0, 0.8,
                                       temp)  # fmt: skip
        loss.backward()
        values.append(loss.detach())
        grads.append([x[k].grad for k in leaves])
    torch.testing.assert_close(values[0], values[1])
    for ours, published in zip(*grads):
        torch.testing.assert_close(ours, published)


# --------------------------------------------------------------------------------------------
# The mask: the published interpret_computation_steps, transcribed
# --------------------------------------------------------------------------------------------
def published_mask(brain: L2I, H: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The per-clip loop of the published ``interpret_computation_steps`` (mask lines)."""
    masks = []
    W = brain.hparams.nmf_decoder.return_W()
    theta = brain.modules.theta
    for psi_out, pred in zip(H, logits.argmax(dim=1).tolist()):
        z = theta.hard_att(psi_out).squeeze()
        theta_c_w = theta.classifier[0].weight[pred]
        r_c_x = theta_c_w * z / torch.abs(theta_c_w * z).max()
        L = torch.arange(r_c_x.shape[0])[r_c_x > brain.hparams.relevance_th].tolist()
        X_withselected = W[:, L] @ psi_out[L, :]
        Xhat = W @ psi_out
        masks.append((X_withselected / (Xhat + 1e-10)).T)  # (frames, bins)
    return torch.stack(masks)


def test_mask_is_the_published_one_in_range_and_thresholded(tmp_path, device, ckpts):
    brain = make_brain(tmp_path, device, ckpts, pretrained_interpreter=ckpts["psi"])
    batch = tiny_batch()
    brain.on_stage_start(sb.Stage.TEST)
    counts = {}
    for th in (-1.01, 0.2, 1.0):
        brain.hparams.relevance_th = th
        with torch.no_grad():
            out = brain.compute_forward(batch, sb.Stage.TEST)
        assert out.mask.shape == out.X.shape == (3, FRAMES, 513)
        assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
        H = out.extras["activations"]
        assert H.shape == (3, K, FRAMES) and bool((H >= 0).all()) and float(H.sum()) > 0
        expected = published_mask(brain, H, out.logits).clamp(0, 1)
        torch.testing.assert_close(out.mask, expected, atol=1e-5, rtol=1e-5)
        counts[th] = out.extras["selected"].sum(dim=1).tolist()
        torch.testing.assert_close(out.X_int, out.mask * out.X)
        if th == 1.0:  # no component above the maximal relevance: empty interpretation
            assert float(out.mask.abs().max()) == 0.0
        if th == -1.01:  # every component: W H / (W H + eps) = 1 wherever W H > 0
            assert float(out.mask.mean()) > 0.99
    assert counts[-1.01] == [K] * 3 and counts[1.0] == [0] * 3
    assert all(1 <= c < K for c in counts[0.2]), counts


def test_frames_other_than_theta_and_psi(tmp_path, device, ckpts):
    """A 1.3 s clip (112 frames): psi pads the maps, theta gets its 87 frames, the mask X's."""
    brain = make_brain(tmp_path, device, ckpts)
    brain.on_stage_start(sb.Stage.TEST)
    with torch.no_grad():
        out = brain.compute_forward(tiny_batch(2, seconds=1.3), sb.Stage.TEST)
    assert out.mask.shape == out.X.shape and out.X.shape[1] == 112
    assert out.extras["activations"].shape == (2, K, 112)


# --------------------------------------------------------------------------------------------
# Gradients, checkpoints
# --------------------------------------------------------------------------------------------
def test_gradients_reach_psi_and_theta_only(tmp_path, device, ckpts):
    brain = make_brain(tmp_path, device, ckpts)
    brain.init_optimizers()
    batch = tiny_batch()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    loss = brain.compute_objectives(out, batch, sb.Stage.TRAIN)
    expected, _ = l2i_loss(out.logits, out.extras["theta_out"], out.extras["reconstruction"],
                           out.X, out.extras["activations"], alpha=10, beta=0.8,
                           classifier_temp=1)  # fmt: skip
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for name in ("psi", "theta"):
        grads = [p.grad for p in getattr(brain.modules, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert all(p.grad is None for p in brain.hparams.model.parameters())
    assert brain.hparams.nmf_decoder.W.grad is None


def test_published_checkpoints_load_strictly(tmp_path, device, ckpts):
    brain = make_brain(tmp_path, device, ckpts, pretrained_interpreter=ckpts["psi"])
    for module, path in ((brain.hparams.psi_model, ckpts["psi"]),
                         (brain.hparams.theta, Path(ckpts["psi"]).parent / THETA_FILE)):  # fmt: skip
        state = torch.load(path, weights_only=True)
        own = module.state_dict()
        assert set(own) == set(state)
        assert all(torch.equal(own[k].cpu(), state[k]) for k in state)
    nmf = torch.load(ckpts["nmf"], weights_only=True)["W"]
    assert torch.equal(brain.hparams.nmf_decoder.W.cpu(), nmf)
    # Same outputs as the published class on maps of a 5 s clip (431 frames, which it fits).
    published = CNN14PSI_stft_2d(dim=64, K=K).eval()
    published.load_state_dict(torch.load(ckpts["psi"], weights_only=True))
    maps = brain.hparams.model.embedding_model(torch.rand(2, 431, 80), return_maps=True).maps
    with torch.no_grad():
        torch.testing.assert_close(brain.hparams.psi_model.eval().cpu()(maps), published(maps))
    # A published CKPT+ folder (psi_model.ckpt, theta.ckpt, ...) is accepted as it is
    folder = make_brain(
        tmp_path, device, ckpts, pretrained_interpreter=str(Path(ckpts["psi"]).parent)
    )
    assert torch.equal(folder.hparams.theta.hard_att.weight, brain.hparams.theta.hard_att.weight)
    # theta is needed too: a psi_model.ckpt alone is refused, with the fix
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "psi_model.ckpt").write_bytes(Path(ckpts["psi"]).read_bytes())
    with pytest.raises(FileNotFoundError, match="pretrained_theta"):
        make_brain(tmp_path, device, ckpts, pretrained_interpreter=str(lonely / "psi_model.ckpt"))
    with pytest.raises(ValueError, match="shapes"):
        make_brain(tmp_path, device, ckpts, K=K + 1, nmf_decoder_path=None,
                   pretrained_interpreter=ckpts["psi"])  # fmt: skip


# --------------------------------------------------------------------------------------------
# The recipe and eval.py
# --------------------------------------------------------------------------------------------
def recipe_args(data, out, ckpts, device, sizes=None, **overrides) -> list[str]:
    options = {
        "data_folder": data,
        "output_folder": out,
        "embedding_model_path": ckpts["embedding_model"],
        "classifier_model_path": ckpts["classifier"],
        "nmf_decoder_path": ckpts["nmf"],
        **(TINY if sizes is None else sizes),
        "train_fold_nums": "[1]",
        "batch_size": 5,
        "lr": 0.002,
        "number_of_epochs": 1,
        "num_threads": 0,
        "n_saved_interpretations": 2,
        "device": device,
        **overrides,
    }
    return [str(YAML), "--noprogressbar"] + [
        x for k, v in options.items() for x in (f"--{k}", str(v))
    ]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


METRIC_KEYS = ("AI", "AD", "AG", "FF", "fid_in", "SPS", "COMP", "loc_iou", "random_loc_iou")
L2I_KEYS = ("l2i_fid", "recons_err", "reg_loss", "fid_loss", "n_relevant")


def test_recipe_trains_and_writes_metrics_wavs_pngs(tmp_path, tiny_esc50, device, ckpts):
    out = tmp_path / "run"
    results = load_script("train_l2i").main(recipe_args(tiny_esc50, out, ckpts, device))
    metrics = read_json(out / "test_metrics.json")
    assert metrics == results["main"] and metrics["n_samples"] == 10.0
    assert set(METRIC_KEYS + L2I_KEYS) <= set(metrics)
    assert (out / "save" / "psi_model.ckpt").is_file() and (out / "save" / THETA_FILE).is_file()
    assert len(list((out / "interpretations").rglob("*.png"))) == 2
    wavs = sorted(p.name for p in (out / "interpretations").rglob("*.wav"))
    assert wavs.count("interpretation.wav") == 2 and wavs.count("original.wav") == 2
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1" in log and "valid fid_in" in log
    # The exported psi_model.ckpt + theta.ckpt give the same test metrics. (SpeechBrain 1.1.2
    # parses --test_only as a flag: "--test_only True" would glue "True" onto the previous
    # override's value, so the flag goes alone.)
    only = tmp_path / "only"
    psi = out / "save" / "psi_model.ckpt"
    args = recipe_args(tiny_esc50, only, ckpts, device, pretrained_interpreter=psi)
    load_script("train_l2i").main(args + ["--test_only"])
    # (the random baseline's generator runs on from validation in the training run: not compared)
    reloaded = read_json(only / "test_metrics.json")
    assert {k: v for k, v in reloaded.items() if not k.startswith("random_")} == {
        k: v for k, v in metrics.items() if not k.startswith("random_")
    }
    assert not (only / "save" / "psi_model.ckpt").exists()  # nothing was trained


@pytest.fixture(scope="module")
def ljspeech(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lj") / "LJSpeech-1.1"
    generate_speech_like(str(folder), n_files=3, duration=1.5, ljspeech_layout=True)
    return str(folder)


def test_eval_every_overlap_setting(tmp_path, tiny_esc50, ljspeech, device, ckpts):
    out = tmp_path / "eval"
    args = recipe_args(tiny_esc50, out, ckpts, device, pretrained_interpreter=ckpts["psi"],
                       overlap_type="all", ljspeech_path=Path(ljspeech).parent, batch_size=4,
                       n_saved_interpretations=1)  # fmt: skip
    results = load_script("eval").main(args)
    assert set(results) == {"mixtures", "LJSpeech", "white_noise"}
    for setting, values in results.items():
        metrics = read_json(out / setting / "test_metrics.json")
        assert metrics == values and metrics["n_samples"] == 20.0  # fold 4, 2 versions each
        assert set(METRIC_KEYS[:-2] + L2I_KEYS) <= set(metrics)
        assert any((out / setting / "interpretations").rglob("*.png"))


# --------------------------------------------------------------------------------------------
# The Conv2d classifier (hparams/l2i_conv2d.yaml)
# --------------------------------------------------------------------------------------------
CONV2D_YAML = ROOT / "hparams" / "l2i_conv2d.yaml"
CONV2D_FRAMES = 81  # PsiOptimized's frames for a 1 s clip (87 frames); 417 for 5 s
CONV2D_TINY = {"emb_dim": 8, "out_n_neurons": N_CLASSES, "K": K, "theta_frames": CONV2D_FRAMES}


@pytest.fixture(scope="module")
def conv2d_ckpts(tmp_path_factory) -> dict:
    """Tiny Conv2dEncoder_v2 + ECAPA head, NMF dictionary and a PsiOptimized + Theta, as the
    published checkpointer saves them (random weights)."""
    from speechbrain.lobes.models.L2I import PsiOptimized

    from audio_interpretability.models.conv2d import Conv2dEncoder
    from audio_interpretability.models.heads import CosineHead

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("conv2d")
    paths = export_classifier(
        Conv2dEncoder(dim=8), CosineHead(8, N_CLASSES, scale=1.0, lin_blocks=1), folder
    )
    paths["nmf"] = str(folder / "nmf_decoder.ckpt")
    torch.save(NMFDecoderAudio(n_comp=K, n_freq=513).state_dict(), paths["nmf"])
    paths["psi"] = str(folder / "psi_model.ckpt")
    psi = PsiOptimized(dim=8, K=K, use_adapter=False, adapter_reduce_dim=False)
    torch.save(psi.state_dict(), paths["psi"])
    theta = Theta(n_comp=K, T=CONV2D_FRAMES, num_classes=N_CLASSES)
    torch.save(theta.state_dict(), folder / THETA_FILE)
    return paths


def test_conv2d_encoder_is_the_published_one():
    from speechbrain.lobes.models.PIQ import Conv2dEncoder_v2

    from audio_interpretability.models.conv2d import Conv2dEncoder

    ours, published = Conv2dEncoder(dim=8).eval(), Conv2dEncoder_v2(dim=8).eval()
    ours.load_state_dict(published.state_dict())  # strict: the same parameters
    X = torch.rand(2, 87, 513)
    out = ours(ours.input_from_spectrogram(X), return_maps=True)
    with torch.no_grad():
        torch.testing.assert_close(out.embedding, published(X).mean((-1, -2)))
    assert out.maps[0].shape == (2, 8, 5, 32)


def test_conv2d_recipe_and_mask(tmp_path, tiny_esc50, device, conv2d_ckpts):
    args = recipe_args(tiny_esc50, tmp_path / "run", conv2d_ckpts, device, sizes=CONV2D_TINY)
    args[0] = str(CONV2D_YAML)
    results = load_script("train_l2i").main(args)
    metrics = read_json(tmp_path / "run" / "test_metrics.json")
    assert metrics == results["main"] and metrics["n_samples"] == 10.0
    assert set(METRIC_KEYS + L2I_KEYS) <= set(metrics)
    # The mask: psi's 81 frames, zero-padded to X's 87 (published F.pad), in [0, 1].
    values = {
        "data_folder": str(tmp_path / "unused"),
        "output_folder": str(tmp_path / "out"),
        "embedding_model_path": conv2d_ckpts["embedding_model"],
        "classifier_model_path": conv2d_ckpts["classifier"],
        "nmf_decoder_path": conv2d_ckpts["nmf"],
        "pretrained_interpreter": conv2d_ckpts["psi"],
        **CONV2D_TINY,
    }
    with open(CONV2D_YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)
    brain = L2I(modules=hparams["modules"], hparams=hparams,
                run_opts={"device": str(device), "noprogressbar": True})  # fmt: skip
    brain.on_stage_start(sb.Stage.TEST)
    with torch.no_grad():
        out = brain.compute_forward(tiny_batch(), sb.Stage.TEST)
    assert out.mask.shape == out.X.shape == (3, FRAMES, 513)
    assert out.extras["activations"].shape == (3, K, CONV2D_FRAMES)
    assert bool(((out.mask >= 0) & (out.mask <= 1)).all())
    assert float(out.mask[:, CONV2D_FRAMES:].abs().max()) == 0.0
    expected = published_mask(brain, out.extras["activations"], out.logits).clamp(0, 1)
    torch.testing.assert_close(out.mask[:, :CONV2D_FRAMES], expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# The published README's commands: train_nmf.py, then train_l2i.py on its dictionary
# --------------------------------------------------------------------------------------------
README_NMF = "python train_nmf.py hparams/nmf.yaml --data_folder /yourpath/ESC50 --save_period 30"
README_L2I = "python train_l2i.py hparams/{yaml} --data_folder /yourpath/ESC50"


def run_command(command: str, data: str, extra: dict):
    """Run a README command in-process from recipes/ESC50/interpret (cwd set by the caller)."""
    python, script, *argv = command.replace("/yourpath/ESC50", data).split()
    assert python == "python"
    module = load_script(Path(script).stem)
    extras = [x for k, v in extra.items() for x in (f"--{k}", str(v))]
    return module.main(argv + extras + ["--num_threads", "0", "--noprogressbar"])


def test_readme_nmf_then_l2i(tmp_path, tiny_esc50, device, ckpts, conv2d_ckpts, monkeypatch):
    monkeypatch.chdir(RECIPES)
    common = {"train_fold_nums": "[1]", "batch_size": 5, "number_of_epochs": 1, "device": device}
    nmf = tmp_path / "nmf"
    run_command(README_NMF, tiny_esc50, {**common, "sample_rate": 16000, "K": K,
                                         "output_folder": nmf})  # fmt: skip
    dictionary = nmf / "save" / "nmf_decoder.ckpt"
    for yaml, sizes, classifier in (("l2i_cnn14.yaml", TINY, ckpts),
                                    ("l2i_conv2d.yaml", CONV2D_TINY, conv2d_ckpts)):  # fmt: skip
        out = tmp_path / yaml
        extra = {**common, **sizes, "output_folder": out, "nmf_decoder_path": dictionary,
                 "embedding_model_path": classifier["embedding_model"],
                 "classifier_model_path": classifier["classifier"],
                 "n_saved_interpretations": 1}  # fmt: skip
        results = run_command(README_L2I.format(yaml=yaml), tiny_esc50, extra)
        assert results["main"] == read_json(out / "test_metrics.json")
        assert (out / "save" / "psi_model.ckpt").is_file()
