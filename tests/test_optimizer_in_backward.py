"""``optimizer_in_backward: True`` (issue 13): L-MAC's decoder stepped inside the backward pass.

At a tiny size: the trained decoder and the optimizer state are the plain loop's without
clipping (float rounding aside), the checkpointer saves and recovers the per-parameter
optimizers (a resumed run ends as an uninterrupted one), and what the per-parameter step
cannot do (global gradient clipping, gradient accumulation, ...) is refused before training.
"""

from pathlib import Path

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch

from audio_interpretability.brains import optimizer_in_backward as oib_module
from audio_interpretability.brains.lmac import LMAC
from audio_interpretability.brains.optimizer_in_backward import OptimizerInBackward
from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hparams" / "lmac_cnn14.yaml"
N_CLASSES = 5
TINY = {"base_channels": 4, "emb_dim": 128, "decoder_width": 8, "out_n_neurons": N_CLASSES}
#: The plain loop without clipping: SpeechBrain 1.1.2 clips unconditionally, and
#: clip_grad_norm_ with 0 zeroes the gradients; with a huge norm it multiplies them by 1.0.
NO_CLIPPING = 1e30
OIB = {"optimizer_in_backward": True, "max_grad_norm": 0}


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return export_classifier(
        Cnn14(emb_dim=128, base_channels=4), LinearHead(128, N_CLASSES), folder
    )


def make_brain(folder, device, classifier_ckpt, run_opts=None, **overrides) -> LMAC:
    values = {
        "data_folder": str(folder / "unused"),
        "output_folder": str(folder / "out"),
        "embedding_model_path": classifier_ckpt["embedding_model"],
        "classifier_model_path": classifier_ckpt["classifier"],
        "num_threads": 0,
        "lr": 0.003,
        "random_baseline": False,
        "save_interpretations": False,
        **TINY,
        **overrides,
    }
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, values)  # seeded: every brain starts from the same decoder
    return LMAC(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": str(device), "noprogressbar": True, **(run_opts or {})},
        checkpointer=hparams["checkpointer"],
    )


def batches(n_batches=4, size=2, seconds=1.0, sample_rate=16000) -> list:
    """Tones over noise (seeded, independent of the global generator)."""
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    out = []
    for b in range(n_batches):
        items = []
        for i in range(size):
            k = b * size + i
            wav = torch.sin(2 * torch.pi * (200.0 + 150.0 * k) * t) * (t > 0.1 * (k % 4))
            wav = wav + 0.1 * torch.randn(t.numel(), generator=gen)
            label = torch.tensor([k % N_CLASSES])
            items.append(
                {"id": f"c{k}", "sig": wav / wav.abs().max(), "class_string_encoded": label}
            )
        out.append(PaddedBatch(items))
    return out


def train(brain: LMAC, data: list) -> list:
    brain.on_fit_start()  # init_optimizers + recovery, as fit() does
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    return [float(brain.fit_batch(batch)) for batch in data]


def decoder(brain: LMAC) -> dict:
    return {k: v.detach().clone() for k, v in brain.hparams.psi_model.state_dict().items()}


@pytest.mark.parametrize("chunked", [False, True])
def test_same_training_as_the_plain_loop(tmp_path, device, classifier_ckpt, monkeypatch, chunked):
    """3 steps: the decoder, the losses and the Adam state of the per-parameter step equal
    the plain loop's (max_grad_norm without effect) up to float rounding; every gradient is
    freed inside the backward pass. ``chunked``: every weight of 256 bytes or more gets a
    RowStepper (at the paper size only those of 32 MiB or more), and the layers that compute
    their weight gradient by chunks of rows (the one-product transposed convolutions) step
    each chunk as it comes: the same training."""
    data = batches(3)
    plain = make_brain(tmp_path / "plain", device, classifier_ckpt, max_grad_norm=NO_CLIPPING)
    chunks = []
    if chunked:
        monkeypatch.setattr(oib_module, "CHUNK_BYTES", 256)
        step_rows = oib_module.RowStepper.step_rows

        def spy(stepper, start, stop, grad):
            chunks.append((stepper.param.shape, start, stop))
            return step_rows(stepper, start, stop, grad)

        monkeypatch.setattr(oib_module.RowStepper, "step_rows", spy)
    ours = make_brain(tmp_path / "oib", device, classifier_ckpt, **OIB)
    start = decoder(plain)
    assert all(torch.equal(start[k], v) for k, v in decoder(ours).items())

    losses_plain, losses_ours = train(plain, data), train(ours, data)
    assert isinstance(ours.optimizer, OptimizerInBackward)
    assert not isinstance(plain.optimizer, OptimizerInBackward)
    assert all(p.grad is None for p in ours.modules.parameters())
    assert ours.optimizer_step == plain.optimizer_step == 3
    assert losses_ours == pytest.approx(losses_plain, rel=1e-5)
    if chunked:  # convt1 and convt2 of the tiny decoder, in several chunks, at every step
        assert {shape for shape, _, _ in chunks} == {
            ours.hparams.psi_model.convt1.weight.shape,
            ours.hparams.psi_model.convt2.weight.shape,
        }
        per_step = len(chunks) // 3
        assert len(chunks) == 3 * per_step and per_step > 2
    else:
        assert not ours.optimizer.steppers  # tiny weights: no stepper at 32 MiB
    a, b = decoder(plain), decoder(ours)
    assert any(not torch.equal(start[k], a[k]) for k in a)  # it trained
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7, msg=key)
    # the optimizer state, in the plain optimizer's format (one checkpoint file for both)
    sa, sb_ = plain.optimizer.state_dict(), ours.optimizer.state_dict()
    assert sa["state"].keys() == sb_["state"].keys() and len(sa["state"]) > 0
    assert sa["param_groups"] == sb_["param_groups"]
    for i in sa["state"]:
        for name, value in sa["state"][i].items():
            torch.testing.assert_close(sb_["state"][i][name], value, rtol=1e-5, atol=1e-9)


def test_resumed_run_ends_as_the_uninterrupted_one(tmp_path, device, classifier_ckpt):
    """2 steps, a checkpoint, a new process-like brain recovering it, 2 more steps: the decoder
    and the optimizer state equal 4 uninterrupted steps (bit for bit); the checkpoint holds the
    per-parameter optimizers' state as ``optimizer.ckpt``."""
    data = batches(4)
    full = make_brain(tmp_path / "full", device, classifier_ckpt, **OIB)
    train(full, data)

    first = make_brain(tmp_path / "resumed", device, classifier_ckpt, **OIB)
    train(first, data[:2])
    saved = first.checkpointer.save_checkpoint(meta={"loss": 1.0})
    assert (saved.path / "optimizer.ckpt").exists()
    del first
    second = make_brain(tmp_path / "resumed", device, classifier_ckpt, **OIB)
    fresh = decoder(second)
    train(second, data[2:])  # on_fit_start recovers the checkpoint
    assert any(not torch.equal(fresh[k], v) for k, v in decoder(second).items())

    a, b = decoder(full), decoder(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb_ = full.optimizer.state_dict(), second.optimizer.state_dict()
    assert sa["param_groups"] == sb_["param_groups"] and sa["state"].keys() == sb_["state"].keys()
    for i in sa["state"]:
        for name, value in sa["state"][i].items():
            assert torch.equal(sb_["state"][i][name], value), (i, name)


def test_plain_checkpoint_resumes_with_optimizer_in_backward(tmp_path, device, classifier_ckpt):
    """The checkpoint format is the plain optimizer's: a plain run's checkpoint resumes with
    the per-parameter step (and its Adam state goes into each parameter's optimizer)."""
    plain = make_brain(tmp_path / "run", device, classifier_ckpt, max_grad_norm=NO_CLIPPING)
    train(plain, batches(1))
    plain.checkpointer.save_checkpoint(meta={"loss": 1.0})
    ours = make_brain(tmp_path / "run", device, classifier_ckpt, **OIB)
    ours.on_fit_start()
    sa, sb_ = plain.optimizer.state_dict(), ours.optimizer.state_dict()
    assert sa["state"].keys() == sb_["state"].keys() and len(sa["state"]) > 0
    for i in sa["state"]:
        for name, value in sa["state"][i].items():
            assert torch.equal(sb_["state"][i][name], value), (i, name)


def test_lr_annealing_reaches_every_parameter(tmp_path, device, classifier_ckpt):
    brain = make_brain(tmp_path, device, classifier_ckpt, **OIB)
    brain.init_optimizers()
    assert brain.optimizer.param_groups[0]["lr"] == pytest.approx(0.003)
    sb.nnet.schedulers.update_learning_rate(brain.optimizer, 0.001)
    assert {g["lr"] for opt in brain.optimizer.optimizers for g in opt.param_groups} == {0.001}


def test_hooks_only_step_inside_the_training_step(tmp_path, device, classifier_ckpt):
    """A backward pass outside fit_batch (e.g. a test's) accumulates gradients as usual."""
    brain = make_brain(tmp_path, device, classifier_ckpt, **OIB)
    brain.init_optimizers()
    before = decoder(brain)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    out = brain.compute_forward(batches(1)[0], sb.Stage.TRAIN)
    brain.compute_objectives(out, batches(1)[0], sb.Stage.TRAIN).backward()
    assert all(torch.equal(before[k], v) for k, v in decoder(brain).items())
    assert all(p.grad is not None for p in brain.hparams.psi_model.parameters())
    old = brain.optimizer
    brain.init_optimizers()  # again (fit called twice): the old hooks are removed
    assert old._handles == [] and len(brain.optimizer._handles) == len(old.params)


def test_clipping_with_optimizer_in_backward_is_refused(tmp_path, device, classifier_ckpt):
    """The published default max_grad_norm 5 cannot be honoured: a ValueError at construction
    (before any training) naming both keys and the fix."""
    with pytest.raises(ValueError, match="optimizer_in_backward") as err:
        make_brain(tmp_path, device, classifier_ckpt, optimizer_in_backward=True)
    assert "max_grad_norm 5.0" in str(err.value) and "--max_grad_norm 0" in str(err.value)
    # a command-line run option too (it overrides the YAML's max_grad_norm)
    with pytest.raises(ValueError, match="--max_grad_norm 0"):
        make_brain(tmp_path, device, classifier_ckpt, run_opts={"max_grad_norm": 1.0}, **OIB)
    make_brain(tmp_path, device, classifier_ckpt, optimizer_in_backward=False)  # default: fine


@pytest.mark.parametrize(
    "run_opts, fix",
    [
        ({"grad_accumulation_factor": 2}, "--grad_accumulation_factor 1"),
        ({"remove_vector_weight_decay": True}, "--remove_vector_weight_decay False"),
    ],
)
def test_other_unsupported_options_are_refused(tmp_path, device, classifier_ckpt, run_opts, fix):
    with pytest.raises(ValueError, match=fix):
        make_brain(tmp_path, device, classifier_ckpt, run_opts=run_opts, **OIB)


def test_nonfinite_gradients_are_skipped_per_parameter(tmp_path, device, classifier_ckpt):
    """skip_nonfinite_grads: as check_gradients, a NaN gradient leaves its parameter as it was."""
    brain = make_brain(
        tmp_path, device, classifier_ckpt, run_opts={"skip_nonfinite_grads": True}, **OIB
    )
    train(brain, [])
    before = decoder(brain)
    bias = brain.hparams.psi_model.state_dict(keep_vars=True)
    name = next(k for k, v in bias.items() if isinstance(v, torch.nn.Parameter))
    bias[name].register_hook(lambda g: torch.full_like(g, float("nan")))
    brain.fit_batch(batches(1)[0])
    after = decoder(brain)
    assert torch.equal(after[name], before[name])
    assert any(not torch.equal(after[k], before[k]) for k in after if k != name)
    assert all(torch.isfinite(v).all() for v in after.values())


# --------------------------------------------------------------------------------------------
# The recipe: killed and resumed (subprocesses, as tests/test_resume.py)
# --------------------------------------------------------------------------------------------
def test_recipe_killed_mid_epoch_resumes_exactly(tmp_path, tiny_esc50, tiny_wham):
    """train_lmac.py --optimizer_in_backward True --max_grad_norm 0, killed in epoch 2 and run
    again, ends with the decoder, checkpoint files (optimizer.ckpt included) and test metrics
    of an uninterrupted run."""
    from test_resume import LAUNCHER, assert_lmac_equal, lmac_args, run

    launcher = tmp_path / "_launch.py"
    launcher.write_text(LAUNCHER)
    torch.manual_seed(0)
    clf = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), tmp_path / "c")
    extra = ["--optimizer_in_backward", "True", "--max_grad_norm", "0"]

    def spec(out):
        recipe, brain, argv = lmac_args(tiny_esc50, out, clf, tiny_wham)
        return recipe, brain, argv + extra

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    log = run(launcher, spec(reference))
    assert "per-parameter optimizers stepped in the backward pass" in log
    run(launcher, spec(resumed), expect_kill=True, KILL_EPOCH="2", KILL_BATCH="2")
    assert not (resumed / "test_metrics.json").exists()
    run(launcher, spec(resumed))
    assert_lmac_equal(reference, resumed)


def test_recipe_refuses_clipping_before_training(tmp_path, tiny_esc50, tiny_wham):
    from test_resume import lmac_args, load_lmac_recipe

    torch.manual_seed(0)
    clf = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), tmp_path / "c")
    _, _, argv = lmac_args(tiny_esc50, tmp_path / "out", clf, tiny_wham)
    with pytest.raises(ValueError, match="--max_grad_norm 0"):
        load_lmac_recipe().main(argv + ["--optimizer_in_backward", "True"])
    assert not list((tmp_path / "out" / "save").glob("CKPT+*"))


def test_row_stepper_is_adams_step_and_refuses_a_second_gradient():
    """A RowStepper's chunks give the whole-tensor Adam step (fused or not; Adam is
    elementwise, so up to the rounding of vectorised against scalar loops), its state is the
    plain optimizer's, and a second gradient for the same
    weight in one backward pass (a weight used twice) is refused: Adam needs their sum."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(10, 3, 2, generator=gen)
    grads = [torch.randn(10, 3, 2, generator=gen) for _ in range(3)]
    for fused in (False, True):
        w_plain = torch.nn.Parameter(start.clone())
        plain = torch.optim.Adam([w_plain], lr=0.1, weight_decay=0.01, fused=fused)
        w = torch.nn.Parameter(start.clone())
        opt = OptimizerInBackward(
            lambda p, fused=fused: torch.optim.Adam(p, lr=0.1, weight_decay=0.01, fused=fused),
            [w],
            chunk_bytes=50,  # 24-byte rows: 2 rows a chunk
        )
        stepper = w.row_stepper
        assert stepper.chunks(10) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
        for grad in grads:
            w_plain.grad = grad
            plain.step()
            with opt.stepping():
                for lo, hi in stepper.chunks(10):
                    stepper.step_rows(lo, hi, grad[lo:hi])
                stepper.finish()
                with pytest.raises(RuntimeError, match="twice in one backward"):
                    stepper.step_rows(0, 2, grad[:2])
        assert not torch.equal(w.detach(), start)
        torch.testing.assert_close(w.detach(), w_plain.detach(), rtol=1e-6, atol=1e-7)
        ours, theirs = opt.state_dict()["state"][0], plain.state_dict()["state"][0]
        assert ours.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-9)
        opt.remove()
        assert not hasattr(w, "row_stepper")
