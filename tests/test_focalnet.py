"""FocalNet: exposed modulators, published sizes, saliency aggregation and options."""

import pytest
import torch

from audio_interpretability.models.focalnet import FOCALNET_CONFIGS, FocalNet


def test_modulators_are_what_a_hook_on_h_captures(device):
    model = FocalNet.from_config("tiny-cpu").to(device).eval()
    captured = {}
    handles = [
        stage.blocks[-1].modulation.h.register_forward_hook(
            lambda module, inputs, output, s=s: captured.__setitem__(s, output)
        )
        for s, stage in enumerate(model.stages)
    ]
    x = torch.rand(2, 1, 64, 64, device=device)
    with torch.no_grad():
        maps = model(x, return_maps=True).maps
    for handle in handles:
        handle.remove()
    assert len(maps) == len(captured) == 4
    for s, modulator in enumerate(maps):
        assert torch.equal(modulator, captured[s])


def test_base_config_matches_published_size_and_documented_map_shapes():
    # microsoft/focalnet-base (FocalNet-B, SRF) has 88.1M parameters with its 1000-class head.
    model = FocalNet.from_config("base")
    n_params = sum(p.numel() for p in model.parameters())
    n_with_head = n_params + model.embedding_dim * 1000 + 1000
    assert model.embedding_dim == 1024
    assert n_params == 87_119_048  # in_chans=1 (3 channels would add 2 * 128 * 16 weights)
    assert abs(n_with_head - 88.1e6) / 88.1e6 < 0.005
    # Map shapes for 224 input do not depend on the depths: check them on a shallow variant.
    shallow = FocalNet.from_config("base", depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        out = shallow(torch.rand(1, 1, 224, 224), return_maps=True)
    assert [tuple(m.shape) for m in out.maps] == [
        (1, 128, 56, 56),
        (1, 256, 28, 28),
        (1, 512, 14, 14),
        (1, 1024, 7, 7),
    ]
    assert out.embedding.shape == (1, 1024)


def test_from_config_overrides_and_unknown_name():
    model = FocalNet.from_config("tiny-cpu", embed_dim=16, focal_levels=3)
    assert model.embedding_dim == 128
    assert len(model.stages[0].blocks[0].modulation.focal_layers) == 3
    assert model.stages[0].blocks[0].modulation.kernel_sizes == [3, 5, 7]
    assert set(FOCALNET_CONFIGS) >= {"base", "base-lrf", "tiny-cpu"}
    with pytest.raises(ValueError, match="tiny-cpu"):
        FocalNet.from_config("huge")


def test_saliency_aggregations_on_hand_made_maps():
    model = FocalNet.from_config("tiny-cpu")
    vector = torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1)  # L2 norm 5
    fine = vector.expand(2, 3, 4, 4)  # (B, C, 4, 4), norm 5 everywhere
    coarse = torch.full((2, 8, 2, 2), 0.5)  # norm sqrt(8 * 0.25) = sqrt(2)
    maps = (fine, coarse)
    root2 = 2.0**0.5
    for aggregation, expected in [("mean", (5 + root2) / 2), ("max", 5.0), ("prod", 5 * root2)]:
        saliency = model.saliency(maps, stages=(0, 1), aggregation=aggregation)
        assert saliency.shape == (2, 4, 4)  # the largest selected grid
        torch.testing.assert_close(saliency, torch.full((2, 4, 4), expected))
    # A single stage keeps its own grid; negative indices count from the end.
    torch.testing.assert_close(model.saliency(maps, stages=(-1,)), torch.full((2, 2, 2), root2))


def test_saliency_keeps_time_frequency_layout():
    model = FocalNet.from_config("tiny-cpu")
    modulator = torch.zeros(1, 4, 4, 6)
    modulator[0, :, 1, 5] = 1.0  # time step 1, frequency 5
    saliency = model.saliency((modulator,), stages=(0,))
    assert saliency.shape == (1, 4, 6)
    assert saliency[0].argmax().item() == 1 * 6 + 5


def test_saliency_errors_name_the_problem():
    model = FocalNet.from_config("tiny-cpu").eval()
    with torch.no_grad():
        maps = model(torch.rand(1, 1, 64, 64), return_maps=True).maps
    with pytest.raises(ValueError, match="return_maps=True"):
        model.saliency(())
    with pytest.raises(ValueError, match="aggregation"):
        model.saliency(maps, aggregation="median")
    for stages in [(4,), (-5,), ()]:
        with pytest.raises(ValueError, match="stages"):
            model.saliency(maps, stages=stages)


def test_bad_inputs_and_configs_raise():
    model = FocalNet.from_config("tiny-cpu")
    with pytest.raises(ValueError, match="input_from_spectrogram"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="img_size"):
        FocalNet.from_config("tiny-cpu", img_size=70)
    with pytest.raises(ValueError, match="focal_levels"):
        FocalNet.from_config("tiny-cpu", focal_levels=(2, 2))


def test_normalize_modulator_divides_the_context_by_the_levels():
    plain = FocalNet.from_config("tiny-cpu").eval()
    normalized = FocalNet.from_config("tiny-cpu", normalize_modulator=True).eval()
    normalized.load_state_dict(plain.state_dict())
    for model in (plain, normalized):  # with zero bias, h(ctx / 3) = h(ctx) / 3
        for stage in model.stages:
            for block in stage.blocks:
                torch.nn.init.zeros_(block.modulation.h.bias)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        # The first stage's input is the same for both models: compare its first block.
        tokens = plain.patch_embed(x)
        _, mod_plain = plain.stages[0].blocks[0](tokens)
        _, mod_normalized = normalized.stages[0].blocks[0](tokens)
    torch.testing.assert_close(mod_normalized * 3, mod_plain)


def test_layerscale_and_postln_variants_train():
    model = FocalNet.from_config(
        "tiny-cpu", use_layerscale=True, layerscale_value=1e-4, use_postln=True
    ).train()
    gammas = [n for n, _ in model.named_parameters() if "gamma" in n]
    assert len(gammas) == 2 * sum(len(stage.blocks) for stage in model.stages)
    out = model(torch.rand(2, 1, 64, 64))
    out.embedding.pow(2).sum().backward()
    assert torch.isfinite(out.embedding).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_drop_path_is_stochastic_in_training_and_deterministic_in_eval():
    model = FocalNet.from_config("tiny-cpu", drop_path_rate=0.5)
    x = torch.rand(4, 1, 64, 64)
    model.train()
    assert not torch.allclose(model(x).embedding, model(x).embedding)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).embedding, model(x).embedding)
