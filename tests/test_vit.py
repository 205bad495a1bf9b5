"""ViT: fused vs explicit attention, the returned attention maps, saliency and rollout."""

import pytest
import torch

from audio_interpretability.models.vit import VIT_CONFIGS, ViT

GRID = 8  # tiny-cpu: 64 x 64 image, patch 8
N_TOKENS = GRID * GRID + 1


@pytest.fixture(scope="module")
def model() -> ViT:
    return ViT.from_config("tiny-cpu").eval()


def test_fused_and_explicit_attention_agree(device):
    model = ViT.from_config("tiny-cpu").to(device).eval()
    x = torch.rand(3, 1, 64, 64, device=device)
    with torch.no_grad():
        fused = model(x)
        explicit = model(x, return_maps=True)
    assert fused.maps == ()
    assert len(explicit.maps) == 4
    torch.testing.assert_close(explicit.embedding, fused.embedding, atol=1e-5, rtol=1e-5)


def test_maps_are_the_attention_probabilities_of_each_layer(model):
    x = torch.rand(2, 1, 64, 64)
    captured = {}
    handle = model.blocks[0].norm1.register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("h", output)
    )
    with torch.no_grad():
        maps = model(x, return_maps=True).maps
    handle.remove()
    assert all(m.shape == (2, 4, N_TOKENS, N_TOKENS) for m in maps)
    for m in maps:  # probability rows
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, N_TOKENS))
    # Recompute layer 0's attention by hand from its normed input and qkv weights.
    attn = model.blocks[0].attn
    q, k, _ = attn.qkv(captured["h"]).chunk(3, dim=-1)  # each (B, N + 1, D)
    q = q.view(2, N_TOKENS, 4, 16).transpose(1, 2)  # (B, heads, N + 1, 16)
    k = k.view(2, N_TOKENS, 4, 16).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 16**0.5, dim=-1)
    torch.testing.assert_close(maps[0], expected)


def test_embedding_is_mean_of_final_normed_tokens(model):
    x = torch.rand(2, 1, 64, 64)
    captured = {}
    handle = model.norm.register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("tokens", output)
    )
    with torch.no_grad():
        embedding = model(x).embedding
    handle.remove()
    assert captured["tokens"].shape == (2, N_TOKENS, 64)
    torch.testing.assert_close(embedding, captured["tokens"].mean(dim=1))


def identity_stack(n_layers: int, batch: int = 1, heads: int = 2) -> list:
    return [torch.eye(N_TOKENS).expand(batch, heads, -1, -1).clone() for _ in range(n_layers)]


def test_mean_saliency_averages_heads_and_layers_on_the_patch_grid(model):
    maps = identity_stack(4)
    maps[3][0, 0, 0] = 0.0
    maps[3][0, 0, 0, 1 + 3] = 1.0  # head 0: CLS -> patch 3 (time 0, freq 3)
    maps[3][0, 1, 0] = 0.0
    maps[3][0, 1, 0, 1 + 2 * GRID + 5] = 1.0  # head 1: CLS -> patch (time 2, freq 5)
    saliency = model.saliency(tuple(maps))
    assert saliency.shape == (1, GRID, GRID)
    expected = torch.zeros(1, GRID, GRID)
    expected[0, 0, 3] = expected[0, 2, 5] = 0.5
    torch.testing.assert_close(saliency, expected)
    # Averaging with layer 0 (CLS attends to itself only) halves the values.
    torch.testing.assert_close(model.saliency(tuple(maps), layers=(0, -1)), expected / 2)


def test_rollout_of_identity_and_uniform_attention(model):
    # Identity attention: CLS only ever attends to itself -> no patch receives anything.
    rollout = model.saliency(tuple(identity_stack(4)), method="rollout")
    torch.testing.assert_close(rollout, torch.zeros(1, GRID, GRID))
    # Uniform attention U: ((U + I) / 2)**L = (I + (2**L - 1) U) / 2**L, so every patch gets
    # (2**L - 1) / (2**L * N_TOKENS) of the CLS row. layers=(1,) rolls out layers 0 and 1.
    uniform = tuple(torch.full((2, 3, N_TOKENS, N_TOKENS), 1 / N_TOKENS) for _ in range(4))
    for layers, n_layers in [((-1,), 4), ((1,), 2), ((0, 2), 3)]:
        rollout = model.saliency(uniform, layers=layers, method="rollout")
        value = (2**n_layers - 1) / (2**n_layers * N_TOKENS)
        torch.testing.assert_close(rollout, torch.full((2, GRID, GRID), value))


def test_rollout_multiplies_layers_in_order(model):
    # Layer 0: patch token 1 attends to patch token 2. Layer 1: CLS attends to token 1.
    # Rollout (A1 + I)/2 @ (A0 + I)/2 gives the CLS row 0.5 e0 + 0.25 e1 + 0.25 e2: CLS
    # reaches token 2 through token 1. The reversed product would give 0.5 e0 + 0.5 e1.
    maps = identity_stack(2)
    maps[0][:, :, 1] = 0.0
    maps[0][:, :, 1, 2] = 1.0
    maps[1][:, :, 0] = 0.0
    maps[1][:, :, 0, 1] = 1.0
    rollout = model.saliency(tuple(maps), method="rollout")
    expected = torch.zeros(1, GRID, GRID)
    expected[0, 0, 0] = expected[0, 0, 1] = 0.25
    torch.testing.assert_close(rollout, expected)


def test_saliency_errors_name_the_problem(model):
    maps = tuple(identity_stack(4))
    with pytest.raises(ValueError, match="return_maps=True"):
        model.saliency(())
    with pytest.raises(ValueError, match="method"):
        model.saliency(maps, method="gradcam")
    for layers in [(4,), (-5,), ()]:
        with pytest.raises(ValueError, match="layers"):
            model.saliency(maps, layers=layers)
    with pytest.raises(ValueError, match="tokens"):
        model.saliency(tuple(torch.eye(17).expand(1, 2, 17, 17) for _ in range(4)))


def test_bad_inputs_and_configs_raise(model):
    with pytest.raises(ValueError, match="input_from_spectrogram"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        ViT(img_size=60, patch_size=8)
    with pytest.raises(ValueError, match="num_heads"):
        ViT.from_config("tiny-cpu", num_heads=5)
    with pytest.raises(ValueError, match="tiny-cpu"):
        ViT.from_config("large")


def test_configs_and_sizes():
    assert set(VIT_CONFIGS) >= {"base", "small", "tiny-cpu"}
    small = ViT.from_config("small", depth=1)
    assert small.embedding_dim == 384 and small.grid_size == 14
    assert small.blocks[0].attn.num_heads == 6
    # ViT-B/16 per block: qkv + proj + MLP + 2 LayerNorms = 7,087,872 parameters.
    base_block = ViT.from_config("base", depth=1).blocks[0]
    assert sum(p.numel() for p in base_block.parameters()) == 7_087_872


def test_drop_path_and_dropout_only_act_in_training():
    model = ViT.from_config("tiny-cpu", drop_rate=0.1, drop_path_rate=0.2)
    x = torch.rand(2, 1, 64, 64)
    model.train()
    assert not torch.allclose(model(x).embedding, model(x).embedding)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).embedding, model(x, return_maps=True).embedding)
