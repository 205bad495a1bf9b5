"""Tests of the L-MAC decoder against SpeechBrain's CNN14PSI_stft, and of its frame alignment."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.Cnn14 import CNN14PSI_stft

from audio_interpretability.features import Frontend
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.decoders import CNN14Decoder


@pytest.fixture(scope="module")
def tiny_cnn14() -> Cnn14:
    torch.manual_seed(0)
    return Cnn14(mel_bins=80, emb_dim=64, base_channels=2).eval()


def test_full_size_matches_speechbrain(device):
    reference = CNN14PSI_stft(dim=2048, outdim=1)
    with torch.device("meta"):  # skip the slow random init: the weights come from reference
        decoder = CNN14Decoder(in_dim=2048)
    decoder.load_state_dict(reference.state_dict(), strict=True, assign=True)
    cnn14 = Cnn14(mel_bins=80, emb_dim=2048).to(device).eval()
    reference.to(device)
    decoder.to(device)
    # 40 frames: T % 32 in 8..15, where the published decoder's skip branches line up.
    with torch.no_grad():
        maps = cnn14(torch.randn(1, 40, 80, device=device), return_maps=True).maps
        expected = reference(maps)
        logits = decoder(maps)
    assert logits.shape == (1, 1, 41, 513)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert logits.std() > 0


@pytest.mark.parametrize("out_dim", [1, 2])
def test_default_width_is_cnn14psi_stft_at_any_size(tiny_cnn14, out_dim):
    reference = CNN14PSI_stft(dim=64, outdim=out_dim)
    decoder = CNN14Decoder(in_dim=64, out_dim=out_dim)
    decoder.load_state_dict(reference.state_dict(), strict=True)
    maps = tiny_cnn14(torch.randn(2, 201, 80), return_maps=True).maps
    with torch.no_grad():
        torch.testing.assert_close(decoder(maps), reference(maps))


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_tiny_decoder_gives_one_logit_per_spectrogram_bin(tiny_cnn14, seconds):
    frontend = Frontend(sample_rate=16000)
    wavs = torch.randn(2, int(seconds * 16000))
    X = frontend(wavs).X  # (2, frames, 513)
    maps = tiny_cnn14(tiny_cnn14.input_from_spectrogram(X), return_maps=True).maps
    decoder = CNN14Decoder(in_dim=64, width=16)
    logits = decoder(maps)
    n_frames = X.shape[1]
    assert logits.shape == (2, 1, 8 * (n_frames // 8) + 1, 513)  # documented frame count
    aligned = decoder.align_frames(logits[:, 0], n_frames)
    assert aligned.shape == X.shape
    assert torch.isfinite(aligned).all()


def test_any_length_is_within_a_few_frames(tiny_cnn14):
    # The published decoder fails when T % 32 is outside 8..15; ours handles every length.
    decoder = CNN14Decoder(in_dim=64, width=8)
    with torch.no_grad():
        for n_frames in range(32, 100):
            maps = tiny_cnn14(torch.randn(1, n_frames, 80), return_maps=True).maps
            out_frames = decoder(maps).shape[2]
            assert -1 <= n_frames - out_frames <= 6, n_frames


def test_gradients_reach_every_decoder_parameter(tiny_cnn14):
    decoder = CNN14Decoder(in_dim=64, width=16)
    with torch.no_grad():
        maps = tiny_cnn14(torch.randn(2, 87, 80), return_maps=True).maps
    mask = torch.sigmoid(decoder.align_frames(decoder(maps)[:, 0], 87))
    (mask * torch.rand_like(mask)).sum().backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_align_frames_crops_or_repeats_the_last_frame():
    decoder = CNN14Decoder(in_dim=64, width=8)
    logits = torch.arange(2 * 5 * 513, dtype=torch.float32).reshape(2, 5, 513)
    cropped = decoder.align_frames(logits, 3)
    assert torch.equal(cropped, logits[:, :3])
    assert torch.equal(decoder.align_frames(logits, 5), logits)
    padded = decoder.align_frames(logits, 9)
    assert padded.shape == (2, 9, 513)
    assert torch.equal(padded[:, :5], logits)
    for frame in range(5, 9):
        assert torch.equal(padded[:, frame], logits[:, 4])
    # Gradients of padded frames flow back to the last real frame.
    source = logits.clone().requires_grad_(True)
    decoder.align_frames(source, 7).sum().backward()
    assert source.grad[0, 4, 0] == 3 and source.grad[0, 3, 0] == 1


def test_clear_errors():
    decoder = CNN14Decoder(in_dim=64, width=8)
    with pytest.raises(ValueError, match="more than 8 apart"):
        decoder.align_frames(torch.zeros(1, 80, 513), 89)
    with pytest.raises(ValueError, match=r"\(batch, frames, 513\).*\(1, 80, 257\)"):
        decoder.align_frames(torch.zeros(1, 80, 257), 80)
    with pytest.raises(ValueError, match=r"decoder\(maps\)\[:, 0\]"):
        decoder.align_frames(torch.zeros(1, 1, 80, 513), 80)
    with pytest.raises(ValueError, match="divisible by 8"):
        CNN14Decoder(in_dim=64, width=12)
    wrong_channels = Cnn14(emb_dim=64, base_channels=8).eval()  # maps (64, 128, 64, 32)
    with pytest.raises(ValueError, match=r"\(64, 32, 16, 8\).*\(64, 128, 64, 32\)"):
        decoder(wrong_channels(torch.randn(1, 64, 80), return_maps=True).maps)
    wrong_mels = Cnn14(mel_bins=64, emb_dim=64, base_channels=2).eval()
    with pytest.raises(ValueError, match="mel_bins=80"):
        decoder(wrong_mels(torch.randn(1, 64, 64), return_maps=True).maps)


def test_map_channels_for_any_cnn14_width(tmp_path):
    """A Cnn14 whose emb_dim is not 32 * base_channels still gets a decoder."""
    cnn14 = Cnn14(emb_dim=128, base_channels=8).eval()
    maps = cnn14(torch.randn(2, 87, 80), return_maps=True).maps
    assert tuple(m.shape[1] for m in maps) == (128, 128, 64, 32)
    with pytest.raises(ValueError, match=r'--decoder_map_channels "\[128, 128, 64, 32\]"'):
        CNN14Decoder(in_dim=128, width=16)(maps)
    decoder = CNN14Decoder(width=16, map_channels=(128, 128, 64, 32))
    assert decoder(maps).shape == (2, 1, 81, 513)
    # the fix the error names is a key of the L-MAC YAML
    from pathlib import Path

    from hyperpyyaml import load_hyperpyyaml

    yaml = Path(__file__).resolve().parents[1] / "hparams" / "lmac_cnn14.yaml"
    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path), "emb_dim": 128,
                 "base_channels": 8, "decoder_width": 16, "decoder_map_channels": [128, 128, 64, 32]}  # fmt: skip
    with open(yaml, encoding="utf-8") as f:
        psi = load_hyperpyyaml(f, overrides)["psi_model"]
    assert psi(maps).shape == (2, 1, 81, 513)
    with pytest.raises(ValueError, match="4 positive channel counts"):
        CNN14Decoder(map_channels=(128, 64))


@pytest.mark.parametrize("batch", [1, 3])
def test_gemm_conv_is_the_same_function(batch):
    """GemmConvTranspose2d (the weight-heavy layers as matmul + fold on the CPU) against
    ConvTranspose2d: same outputs, input and weight gradients, and the same decoder after
    a few optimizer steps, up to float rounding; and the same state dict."""
    torch.manual_seed(0)
    cnn14 = Cnn14(mel_bins=80, emb_dim=256, base_channels=8).eval()
    with torch.no_grad():
        maps = cnn14(torch.randn(batch, 173, 80), return_maps=True).maps
    gemm = CNN14Decoder(in_dim=256, width=128, gemm_conv=True)
    plain = CNN14Decoder(in_dim=256, width=128, gemm_conv=False)
    plain.load_state_dict(gemm.state_dict(), strict=True)
    # every layer runs as matrix products: one over the batch for the first two (many input
    # channels per input position), sample by sample for convt3 .. convt7 and for convt8 and
    # convt9 merged into one (linear_tail); no oneDNN layer
    from unittest import mock

    import audio_interpretability.models.decoders as decoders

    per_sample = decoders._PerSampleConvTranspose
    with (
        mock.patch.object(decoders.F, "fold", wraps=decoders.F.fold) as fold,
        mock.patch.object(per_sample, "apply", wraps=per_sample.apply) as apply,
        mock.patch.object(torch.nn.ConvTranspose2d, "forward") as onednn,
        torch.no_grad(),
    ):
        gemm(maps)
    assert (fold.call_count, apply.call_count, onednn.call_count) == (2, 6, 0)
    # SGD: Adam divides by sqrt(v), which turns the rounding of a near-zero gradient into a
    # full-size step (as any change of summation order would, e.g. another thread count)
    optimizers = [torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9) for d in (gemm, plain)]
    for _ in range(3):
        outs = []
        for decoder, optimizer in zip((gemm, plain), optimizers):
            inputs = [m.clone().requires_grad_() for m in maps]
            out = decoder(tuple(inputs))
            (out.sigmoid() * torch.linspace(-1, 1, out.shape[-1])).mean().backward()
            outs.append((out.detach(), [m.grad for m in inputs], decoder.convt1.weight.grad))
            optimizer.step()
            optimizer.zero_grad()
        (out_a, grads_a, w_a), (out_b, grads_b, w_b) = outs
        torch.testing.assert_close(out_a, out_b, atol=1e-4, rtol=1e-4)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(w_a, w_b, atol=1e-7, rtol=1e-4)
    for (name, a), b in zip(gemm.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("gemm_conv", [True, False])
@pytest.mark.parametrize("frames, out_dim", [(87, 1), (173, 2), (431, 1)])
def test_fused_tail_is_the_same_function(gemm_conv, frames, out_dim):
    """convt8 and convt9 as one transposed convolution (``fuse_tail``, the default) against one
    after the other (as published): the same mask logits, the same gradients for every
    parameter and input map, up to float rounding, at 1 s, 2 s and 5 s of frames (the first
    and last output columns carry the correction for convt8's cropped columns)."""
    torch.manual_seed(0)
    cnn14 = Cnn14(mel_bins=80, emb_dim=64, base_channels=2).eval()
    with torch.no_grad():
        maps = cnn14(torch.randn(2, frames, 80), return_maps=True).maps
    fused = CNN14Decoder(in_dim=64, width=32, out_dim=out_dim, gemm_conv=gemm_conv)
    plain = CNN14Decoder(in_dim=64, width=32, out_dim=out_dim, gemm_conv=gemm_conv, fuse_tail=False)
    plain.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():  # biases well away from zero: their path through convt9 is tested
        for decoder in (fused, plain):
            decoder.convt8.bias.copy_(torch.linspace(-1, 1, decoder.convt8.bias.numel()))
    results = []
    for decoder in (fused, plain):
        inputs = [m.clone().requires_grad_() for m in maps]
        out = decoder(tuple(inputs))
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        grads = [m.grad for m in inputs] + [p.grad for p in decoder.parameters()]
        results.append((out.detach(), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_a.shape == (2, out_dim, 8 * (frames // 8) + 1, 513)
    scale = out_b.abs().max()
    torch.testing.assert_close(out_a, out_b, atol=1e-5 * scale, rtol=0)
    # the edge columns, where the cropped columns' correction applies, as well as the rest
    torch.testing.assert_close(out_a[..., [0, -1]], out_b[..., [0, -1]], atol=1e-5 * scale, rtol=0)
    names = [f"map{i}" for i in range(4)] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max(), rtol=0, msg=name)


@pytest.mark.parametrize(
    "first, second",
    [
        (((3, 4), (2, 2), (0, 2)), ((1, 5), (1, 4))),  # convt8, convt9
        (((2, 5), (1, 2), (0, 3)), ((1, 7), (1, 3))),  # 2 input columns make cropped ones
        (((3, 3), (2, 1), (0, 1)), ((1, 2), (1, 2))),  # second's kernel = its stride
        (((1, 4), (1, 3), (0, 0)), ((1, 6), (1, 2))),  # nothing cropped
    ],
)
def test_linear_tail_other_geometries(first, second):
    """linear_tail against the two layers one after the other for other kernels, strides and
    croppings than the decoder's: output and every gradient, up to float rounding."""
    from audio_interpretability.models.decoders import linear_tail

    torch.manual_seed(0)
    conv1 = torch.nn.ConvTranspose2d(6, 5, *first)
    conv2 = torch.nn.ConvTranspose2d(5, 2, *second)
    x = torch.randn(2, 6, 4, 9)
    outs = []
    for run in (lambda x: linear_tail(conv1, conv2, x), lambda x: conv2(conv1(x))):
        inp = x.clone().requires_grad_()
        out = run(inp)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = [inp.grad] + [p.grad.clone() for m in (conv1, conv2) for p in m.parameters()]
        outs.append((out.detach(), grads))
        conv1.zero_grad(), conv2.zero_grad()
    (out_a, grads_a), (out_b, grads_b) = outs
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_tail_refuses_other_layers():
    from audio_interpretability.models.decoders import linear_tail

    first = torch.nn.ConvTranspose2d(4, 3, 3, 2, (1, 1))  # crops frames too
    second = torch.nn.ConvTranspose2d(3, 1, (1, 5), (1, 4))
    with pytest.raises(ValueError, match="one after the other"):
        linear_tail(first, second, torch.randn(1, 4, 3, 3))


def test_fused_tail_skips_convt8_output():
    """With ``fuse_tail`` neither convt8 nor convt9 runs as a layer: their (B, width / 8,
    frames, 128) intermediate output is never made."""
    from unittest import mock

    decoder = CNN14Decoder(in_dim=64, width=16)
    cnn14 = Cnn14(mel_bins=80, emb_dim=64, base_channels=2).eval()
    with torch.no_grad():
        maps = cnn14(torch.randn(1, 87, 80), return_maps=True).maps
        with (
            mock.patch.object(decoder.convt8, "forward") as convt8,
            mock.patch.object(decoder.convt9, "forward") as convt9,
        ):
            decoder(maps)
    assert convt8.call_count == convt9.call_count == 0


def test_gemm_conv_leaves_bf16_to_conv_transpose():
    """Under bf16 autocast (``--precision bf16``) the layers stay ConvTranspose2d (fold is slow
    in bf16 on the CPU): the output is exactly the plain layer's."""
    from audio_interpretability.models.decoders import GemmConvTranspose2d

    torch.manual_seed(0)
    layer = GemmConvTranspose2d(256, 64, (7, 4), (2, 4), 1)
    x = torch.randn(2, 256, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        plain = torch.nn.ConvTranspose2d.forward(layer, x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, plain)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 6, 4, 5), (3, 5), (2, 2), (1, 1)),  # convt5's geometry
        ((1, 5, 3, 6), (4, 3), (2, 2), (0, 2)),  # padding larger than needed on one axis
        ((3, 4, 2, 7), (1, 5), (1, 4), (0, 0)),  # convt9's: no padding, kernel wider than stride
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_per_sample_conv_transpose_gradients(shape, kernel, stride, padding, chunked, monkeypatch):
    """The sample-by-sample transposed convolution's forward and backward (written by hand:
    unfold of the padded output gradient, then W G and x G^T) against finite differences in
    float64, and its forward against ConvTranspose2d. ``chunked``: the columns made one
    output channel at a time (at the paper size, groups of at most 64 MiB)."""
    from audio_interpretability.models import decoders
    from audio_interpretability.models.decoders import _PerSampleConvTranspose

    if chunked:
        monkeypatch.setattr(decoders, "COLS_CHUNK_BYTES", 1)
        assert decoders._channel_groups(3, 8) == [(0, 1), (1, 2), (2, 3)]
    torch.manual_seed(0)
    c_in, c_out = shape[1], 3
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_in, c_out, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return _PerSampleConvTranspose.apply(x, w, b, stride, padding)

    expected = F.conv_transpose2d(x, w, b, stride, padding)
    out = f(x, w, b)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous()  # fold wrote the cropped output itself: no crop copy after it
    assert torch.autograd.gradcheck(f, (x, w, b))
    # a cropped input (a strided view, as skip_cropped_inputs gives)
    assert torch.autograd.gradcheck(lambda x, w, b: f(x[..., 1:], w, b), (x, w, b))
    # only the gradients asked for are computed
    out = f(x.detach(), w, None)
    (grad_w,) = torch.autograd.grad(out.sum(), (w,))
    assert grad_w.shape == w.shape


def test_package_puts_tensors_on_huge_pages(tmp_path):
    """Importing the package before torch (as every recipe does) sets THP_MEM_ALLOC_ENABLE,
    so that torch puts large tensors on transparent huge pages; a user's setting is kept."""
    import os
    import subprocess
    import sys

    code = (
        "import os, audio_interpretability, torch\n"
        "x = torch.ones(32 * 2**20)\n"
        "huge = sum(int(line.split()[1]) for line in open('/proc/self/smaps')"
        " if line.startswith('AnonHugePages'))\n"
        "print(os.environ['THP_MEM_ALLOC_ENABLE'], huge)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def run(**extra):
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        setting, huge_kb = out.stdout.split()
        return setting, int(huge_kb)

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().split("[")[1].split("]")[0] if thp.exists() else "never"
    setting, huge_kb = run()
    assert setting == "1"
    assert (huge_kb > 0) == (mode != "never")  # torch asks for them (madvise)
    setting, huge_kb = run(THP_MEM_ALLOC_ENABLE="0")
    assert setting == "0"
    assert (huge_kb > 0) == (mode == "always")  # nobody asks: only if the kernel always does


@pytest.mark.parametrize("mode", ["grad", "inference"])
def test_col2im_split_over_threads_is_the_same_fold(monkeypatch, mode):
    """The per-sample forward's fold split into channel groups, one per torch thread (forced
    here on small shapes), gives the values of one col2im call, and the gradients through it
    are ConvTranspose2d's, with autograd and under inference_mode (thread-local, so the
    worker threads must be given it)."""
    from audio_interpretability.models import decoders

    torch.manual_seed(0)
    layer = decoders.GemmConvTranspose2d(6, 5, (3, 4), (2, 2), (0, 1))
    x = torch.randn(2, 6, 7, 9)
    expected = torch.nn.ConvTranspose2d.forward(layer, x.requires_grad_())
    weights = torch.randn_like(expected)  # a loss whose gradient differs per output channel
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, layer.weight))
    x = x.detach()
    monkeypatch.setattr(decoders, "COL2IM_SPLIT_MIN", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 5 channels in groups of 1, 2, 2
    try:
        if mode == "inference":
            with torch.inference_mode():
                out = layer(x)
        else:
            out = layer(x.requires_grad_())
            grads = torch.autograd.grad((out * weights).sum(), (x, layer.weight))
            for got, want in zip(grads, expected_grads):
                torch.testing.assert_close(got, want)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, expected.detach())


def test_col2im_pool_is_rebuilt_in_a_forked_process(monkeypatch):
    """A forked process has none of its parent's threads: the pool is made again there."""
    from audio_interpretability.models import decoders

    pool = decoders._col2im_pool(1)
    assert decoders._col2im_pool(1) is pool
    monkeypatch.setattr(decoders, "_POOL_PID", -1)  # as seen from a child process
    assert decoders._col2im_pool(1) is not pool


def test_tail_and_cropped_layers_keep_no_copy_of_their_input():
    """Memory (issue 13): what the merged tail and a layer with a cropped input keep for their
    backward is their input's own storage (which the previous ReLU keeps anyway) and tensors
    of the weights' size: no flipped copy of the tail's input for its right end, no contiguous
    copy of a cropped input (54 and 27 MiB at the paper size, batch 2)."""
    from audio_interpretability.models.decoders import (
        GemmConvTranspose2d,
        _PerSampleConvTranspose,
        linear_tail,
    )

    torch.manual_seed(0)

    def saved_storages(fn, x):
        saved = []

        def pack(tensor):
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(x)
        out.square().sum().backward()
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}

    first = GemmConvTranspose2d(16, 8, (3, 4), (2, 2), (0, 2))
    second = GemmConvTranspose2d(8, 1, (1, 5), (1, 4), 0)
    x = torch.randn(2, 16, 6, 40, requires_grad=True)
    storages = saved_storages(lambda x: linear_tail(first, second, x), x)
    own = x.untyped_storage().data_ptr()
    assert own in storages
    others = [n for ptr, n in storages.items() if ptr != own]
    assert max(others) < x.untyped_storage().nbytes() / 4  # kernels, not activations
    torch.testing.assert_close(
        x.grad, _grad_of(lambda x: second(first(x)), x), atol=1e-4, rtol=1e-4
    )

    base = torch.randn(2, 6, 4, 30, requires_grad=True)
    w = torch.randn(6, 3, 3, 5, requires_grad=True)
    storages = saved_storages(
        lambda base: _PerSampleConvTranspose.apply(base[..., 2:-2], w, None, (2, 2), (1, 1)), base
    )
    assert set(storages) == {base.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()}
    expected = _grad_of(
        lambda base: F.conv_transpose2d(base[..., 2:-2], w, None, (2, 2), (1, 1)), base
    )
    torch.testing.assert_close(base.grad, expected, atol=1e-4, rtol=1e-4)


def _grad_of(fn, x: torch.Tensor) -> torch.Tensor:
    """The gradient of ``fn(x).square().sum()`` with respect to a fresh copy of ``x``."""
    x = x.detach().clone().requires_grad_()
    fn(x).square().sum().backward()
    return x.grad
