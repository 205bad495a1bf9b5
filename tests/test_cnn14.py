"""Tests of the CNN14 backbone against SpeechBrain's reference implementation."""

import pytest
import torch
from speechbrain.lobes.models.Cnn14 import Cnn14 as ReferenceCnn14
from speechbrain.lobes.models.Cnn14 import ConvBlock as ReferenceConvBlock
from speechbrain.processing.features import Filterbank

from audio_interpretability.models.cnn14 import Cnn14


def _randomise_norms(model: torch.nn.Module) -> None:
    """Give the normalisation layers random affine parameters and running statistics, seeded
    (the conv weights keep their random initialisation)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.dim() != 1:
                continue
            values = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(0.5 + values if name.endswith("running_var") else values - 0.5)


def _reference_like(ours: Cnn14, emb_dim: int, norm_type: str, base: int | None = None):
    """SpeechBrain's Cnn14 holding a copy of ``ours``'s weights (built on the meta device to
    skip a slow init). With ``base``, its blocks are rebuilt as SpeechBrain ConvBlocks of that
    width (SpeechBrain's Cnn14 only has the published widths)."""
    with torch.device("meta"):
        reference = ReferenceCnn14(80, emb_dim, norm_type=norm_type, return_reps=True)
        if base is not None:
            widths = (1, base, 2 * base, 4 * base, 8 * base, 16 * base, emb_dim)
            for i in range(6):
                block = ReferenceConvBlock(widths[i], widths[i + 1], norm_type)
                setattr(reference, f"conv_block{i + 1}", block)
    state = {key: value.clone() for key, value in ours.state_dict().items()}
    reference.load_state_dict(state, strict=True, assign=True)
    # The direction that matters: a SpeechBrain state dict loads strictly into ours.
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference


def _assert_same_outputs(reference, ours, x, atol=1e-5):
    reference_embedding, reference_maps = reference(x)
    out = ours(x, return_maps=True)
    assert out.embedding.shape == (x.shape[0], ours.embedding_dim)
    torch.testing.assert_close(out.embedding, reference_embedding[:, 0], atol=atol, rtol=1e-5)
    assert len(out.maps) == 4
    for mine, theirs in zip(out.maps, reference_maps):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, atol=atol, rtol=1e-5)


def test_full_width_matches_speechbrain(device):
    ours = Cnn14(mel_bins=80, emb_dim=2048)
    _randomise_norms(ours)
    reference = _reference_like(ours, emb_dim=2048, norm_type="bn")
    reference.to(device).eval()
    ours.to(device).eval()
    x = torch.randn(2, 64, 80, device=device)
    with torch.no_grad():
        _assert_same_outputs(reference, ours, x)
        maps = ours(x, return_maps=True).maps
    # Documented shapes for (B, T, 80): blocks 6, 5, 4, 3 (b = 64).
    expected = [(2, 2048, 2, 2), (2, 1024, 2, 2), (2, 512, 4, 5), (2, 256, 8, 10)]
    assert [tuple(m.shape) for m in maps] == expected


@pytest.mark.parametrize("norm_type", ["bn", "in", "ln"])
def test_tiny_width_matches_speechbrain(norm_type, device):
    ours = Cnn14(mel_bins=80, emb_dim=32, norm_type=norm_type, base_channels=4)
    _randomise_norms(ours)
    reference = _reference_like(ours, emb_dim=32, norm_type=norm_type, base=4)
    reference.to(device)
    ours.to(device)
    x = torch.randn(3, 101, 80, device=device)
    with torch.no_grad():
        _assert_same_outputs(reference.eval(), ours.eval(), x)
    # Training mode: batch statistics and dropout at the same places, same random masks.
    torch.manual_seed(5)
    reference_embedding, _ = reference.train()(x)
    torch.manual_seed(5)
    embedding = ours.train()(x).embedding
    torch.testing.assert_close(embedding, reference_embedding[:, 0], atol=1e-5, rtol=1e-5)


def test_input_from_spectrogram_is_log1p_mel_of_the_magnitude(device):
    model = Cnn14(mel_bins=64, emb_dim=16, base_channels=2, sample_rate=22050, n_fft=512)
    model.to(device)
    X = torch.rand(2, 40, 257, device=device) * 3
    mask = (torch.rand(2, 40, 257, device=device) > 0.5).float()
    fbank = Filterbank(n_mels=64, n_fft=512, sample_rate=22050, log_mel=False)
    for spectrogram in (X, mask * X):
        expected = torch.log1p(fbank(torch.expm1(spectrogram)))
        torch.testing.assert_close(model.input_from_spectrogram(spectrogram), expected)
    # The filterbank adds nothing to the state dict (it stays SpeechBrain-compatible).
    assert not any("fbank" in key for key in model.state_dict())


def test_gradient_reaches_the_spectrogram_and_every_parameter():
    model = Cnn14(emb_dim=16, base_channels=2).train()
    X = torch.rand(2, 50, 513, requires_grad=True)
    out = model(model.input_from_spectrogram(X), return_maps=True)
    (out.embedding.sum() + out.maps[-1].sum()).backward()
    assert X.grad is not None and X.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("frames", [96, 101])  # 101: odd sizes, the pooling drops a row
def test_frozen_blocks_give_autograd_input_gradient_keeping_only_masks(frames):
    """A frozen CNN14 in eval mode (L-MAC's masked passes, the gradient interpreters) takes
    _FrozenConvBlock's backward: the same embedding and maps bit for bit, the input gradient
    of autograd's graph up to float rounding, and per block only two boolean masks saved
    (autograd's graph keeps the input and four fp32 maps)."""
    torch.manual_seed(0)
    model = Cnn14(emb_dim=32, base_channels=4).eval()
    _randomise_norms(model)
    X = torch.rand(2, frames, 513)

    def run(frozen: bool):
        model.requires_grad_(not frozen)
        x = X.clone().requires_grad_()
        saved = []

        def pack(tensor):
            saved.append(tensor)
            return tensor

        mel = model.input_from_spectrogram(x)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(mel, return_maps=True)
        loss = (out.embedding * torch.linspace(-1, 1, 32)).sum() + out.maps[1].square().mean()
        (grad,) = torch.autograd.grad(loss, x)
        return out, grad, saved

    with torch.no_grad():
        reference = model(model.input_from_spectrogram(X), return_maps=True)
    lean, lean_grad, lean_saved = run(frozen=True)
    plain, plain_grad, plain_saved = run(frozen=False)
    assert torch.equal(lean.embedding, reference.embedding)
    for a, b in zip(lean.maps, reference.maps):
        assert torch.equal(a, b)
    assert lean_grad.abs().sum() > 0
    torch.testing.assert_close(lean_grad, plain_grad, atol=1e-6, rtol=1e-4)
    bool_maps = [t for t in lean_saved if t.dtype == torch.bool]
    assert len(bool_maps) == 12  # two ReLU masks per block, six blocks

    def fp32_bytes(tensors):  # each storage once
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    params = {p.data_ptr() for p in model.parameters()}
    lean_acts = [t for t in lean_saved if t.data_ptr() not in params and t.is_floating_point()]
    plain_acts = [t for t in plain_saved if t.data_ptr() not in params and t.is_floating_point()]
    # what is left: norm0's input and the embedding's max / mean
    assert fp32_bytes(lean_acts) < 0.1 * fp32_bytes(plain_acts)


def test_frozen_blocks_keep_autograd_when_a_layer_is_watched_or_trained():
    """The lean backward is taken only when nothing else can be asked of the block: in
    training mode, with a trainable parameter, or with a forward hook on an inner layer (a
    Grad-CAM on ``conv_block6.conv2``) the block runs through autograd as before."""
    from unittest import mock

    from audio_interpretability.models import cnn14

    model = Cnn14(emb_dim=16, base_channels=2).eval().requires_grad_(False)
    x = torch.rand(1, 64, 80, requires_grad=True)
    with mock.patch.object(
        cnn14._FrozenConvBlock, "apply", wraps=cnn14._FrozenConvBlock.apply
    ) as lean:
        model(x)
        assert lean.call_count == 6
        handle = model.conv_block6.conv2.register_forward_hook(lambda m, i, o: None)
        model(x)
        assert lean.call_count == 11  # block 6 took autograd's path
        handle.remove()
        model.conv_block1.conv1.weight.requires_grad_(True)
        model(x)
        assert lean.call_count == 16
        model.train()
        model(x)
        with torch.no_grad():
            model.eval()(x)
        assert lean.call_count == 16


def test_saliency_is_channel_norm_of_the_deepest_map():
    model = Cnn14(emb_dim=16, base_channels=2).eval()
    maps = model(torch.randn(2, 96, 80), return_maps=True).maps
    saliency = model.saliency(maps)
    assert saliency.shape == (2, 3, 2)  # (B, T // 32, 80 // 32): time, frequency
    torch.testing.assert_close(saliency[1, 2, 0], maps[0][1, :, 2, 0].pow(2).sum().sqrt())
    with pytest.raises(ValueError, match="return_maps=True"):
        model.saliency(())
    with pytest.raises(ValueError, match="quantile"):
        model.saliency(maps, quantile=0.9)


def test_bad_inputs_raise_clear_errors():
    model = Cnn14(mel_bins=80, emb_dim=16, base_channels=2)
    with pytest.raises(ValueError, match=r"mel_bins=80.*\(2, 50, 64\).*mel_bins=64"):
        model(torch.randn(2, 50, 64))
    with pytest.raises(ValueError, match="at least 32 frames"):
        model(torch.randn(2, 20, 80))
    with pytest.raises(ValueError, match="513"):
        model.input_from_spectrogram(torch.randn(2, 50, 257))
    with pytest.raises(ValueError, match="norm_type"):
        Cnn14(norm_type="batch")
    with pytest.raises(ValueError, match="mel_bins >= 32"):
        Cnn14(mel_bins=16)


def test_checkpoint_round_trip(tmp_path):
    model = Cnn14(emb_dim=32, base_channels=4)
    _randomise_norms(model)
    path = tmp_path / "embedding_model.ckpt"
    torch.save(model.state_dict(), path)
    loaded = Cnn14(emb_dim=32, base_channels=4)
    loaded.load_state_dict(torch.load(path), strict=True)
    x = torch.randn(2, 64, 80)
    with torch.no_grad():
        expected = model.eval()(x, return_maps=True)
        got = loaded.eval()(x, return_maps=True)
    torch.testing.assert_close(got.embedding, expected.embedding, rtol=0, atol=0)
    for mine, theirs in zip(got.maps, expected.maps):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_frozen_gemm_is_the_same_function_clip_by_clip(monkeypatch):
    """``frozen_gemm`` (L-MAC's ``classifier_frozen_gemm``, issue 13's memory): the frozen
    convolutions with large weights run as unfold + matrix products, forward and input
    gradient, so oneDNN never copies their weights. Here every weight counts as large and
    the backward goes clip by clip (at the paper size: blocks 5-6, and block 1 clip by
    clip). The no-grad forward and the frozen forward give the same maps bit for bit, both
    oneDNN's up to float rounding, and the input gradient is autograd's."""
    from unittest import mock

    from audio_interpretability.models import cnn14

    monkeypatch.setattr(cnn14, "FROZEN_GEMM_MIN_BYTES", 0)
    monkeypatch.setattr(cnn14, "FROZEN_BACKWARD_CHUNK_BYTES", 1)
    torch.manual_seed(0)
    model = Cnn14(emb_dim=32, base_channels=4, frozen_gemm=True).eval()
    _randomise_norms(model)
    plain = Cnn14(emb_dim=32, base_channels=4).eval()
    plain.load_state_dict(model.state_dict())
    X = torch.rand(3, 96, 80)
    weights = torch.linspace(-1, 1, 32)

    with torch.no_grad():
        reference = plain(X, return_maps=True)
        with mock.patch.object(cnn14, "_gemm_conv3x3", wraps=cnn14._gemm_conv3x3) as gemm:
            evaluated = model(X, return_maps=True)
    # blocks 5 and 6 (at least as many output channels as positions per clip), two convs each
    assert gemm.call_count == 4
    torch.testing.assert_close(evaluated.embedding, reference.embedding, atol=1e-5, rtol=1e-4)
    for a, b in zip(evaluated.maps, reference.maps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    def gradient(net, frozen):
        net.requires_grad_(not frozen)
        x = X.clone().requires_grad_()
        out = net(x, return_maps=True)
        loss = (out.embedding * weights).sum() + out.maps[1].square().mean()
        return out, torch.autograd.grad(loss, x)[0]

    with mock.patch.object(
        cnn14, "_gemm_conv3x3_input_grad", wraps=cnn14._gemm_conv3x3_input_grad
    ) as gemm_grad:
        lean, lean_grad = gradient(model, frozen=True)
    assert gemm_grad.call_count == 4 * 3  # clip by clip
    assert torch.equal(lean.embedding, evaluated.embedding)
    for a, b in zip(lean.maps, evaluated.maps):
        assert torch.equal(a, b)
    _, autograd_grad = gradient(plain, frozen=False)
    assert lean_grad.abs().sum() > 0
    torch.testing.assert_close(lean_grad, autograd_grad, atol=1e-6, rtol=1e-4)
