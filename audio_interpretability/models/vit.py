"""Vision Transformer backbone (Dosovitskiy et al., 2021) in plain PyTorch.

Conv patch embedding, a CLS token, learned positional embeddings, pre-norm transformer blocks
and a final LayerNorm, as in HF ``ViTModel`` / timm ``VisionTransformer``. The embedding is the
mean over all tokens (CLS included) of the final normed hidden states, as the published ESC-50
recipe pooled HF's ``last_hidden_state``. No pretrained weights are loaded.

Attention uses the fused ``F.scaled_dot_product_attention`` unless maps are requested; with
``return_maps=True`` it computes ``softmax(Q K^T / sqrt(d))`` explicitly and returns the
per-layer attention probabilities, a tuple of ``depth`` tensors of shape
(B, heads, N + 1, N + 1) with N = (img_size / patch_size)**2 patches (token 0 is CLS, patch
tokens follow in row-major (time, frequency) order). Both paths give the same output.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audio_interpretability.models.base import Backbone, BackboneOutput, rename_state_dict_keys
from audio_interpretability.models.image_input import (
    DropPath,
    fold_input_channels,
    init_transformer_weights,
    spectrogram_to_image,
)

#: Named ViT configurations (constructor kwargs), used by :meth:`ViT.from_config`.
VIT_CONFIGS: dict[str, dict] = {
    "base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "tiny-cpu": dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4),
}

_METHODS = ("mean", "rollout")
logger = logging.getLogger(__name__)

#: LayerNorm epsilon of ``transformers``' ViT (google/vit-base-patch16-224).
HF_LAYER_NORM_EPS = 1e-12

#: ``transformers.ViTModel`` state-dict keys -> ours (applied in order), for the checkpoints of
#: SpeechBrain's ESC-50 ViT recipe (google/vit-base-patch16-224 fine-tuned); query / key /
#: value are concatenated into ``qkv`` afterwards.
_PUBLISHED_KEY_RULES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.0."),
    (r"\.output\.dense\.", ".mlp.3."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"^layernorm\.", "norm."),
    (r"^pooler\.dense\.", "pooler."),
)
#: Keys of the pooler (``ViTModel``'s dense + tanh on the CLS token). The published recipe
#: never uses its output (its embedding is the token mean of ``last_hidden_state``), but the
#: weights are part of the model and of the released files (86.4 M parameters with them).
_POOLER_KEYS = ("pooler.weight", "pooler.bias")


class Attention(nn.Module):
    """Multi-head self-attention with a fused path and an explicit path returning the maps.

    Arguments
    ---------
    dim : int
        Token dimension.
    num_heads : int
        Number of heads (must divide ``dim``).
    qkv_bias : bool
        Bias in the query / key / value projection.
    proj_drop : float
        Dropout after the output projection.

    Example
    -------
    >>> attn = Attention(dim=16, num_heads=4)
    >>> out, probs = attn(torch.randn(2, 5, 16), return_attention=True)
    >>> out.shape, probs.shape
    (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"embed_dim={dim} is not divisible by num_heads={num_heads}; "
                "choose num_heads dividing embed_dim."
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) -> ((B, N, D), attention probabilities (B, heads, N, N) or None)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if return_attention:
            probs = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            out = probs @ v  # (B, heads, N, head_dim)
        else:
            probs = None
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(out)), probs


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Arguments
    ---------
    dim : int
        Token dimension.
    num_heads : int
        Attention heads.
    mlp_ratio : float
        MLP hidden size / dim.
    qkv_bias : bool
        Bias in the qkv projection.
    drop : float
        Dropout in the MLP and after the attention projection.
    drop_path : float
        Stochastic-depth probability of both residual branches.
    layer_norm_eps : float
        Epsilon of the two LayerNorms.

    Example
    -------
    >>> out, probs = Block(dim=16, num_heads=4)(torch.randn(2, 5, 16))
    >>> out.shape, probs is None
    (torch.Size([2, 5, 16]), True)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim)
        )
        self.mlp_drop = nn.Dropout(drop)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) -> ((B, N, D), attention probabilities or None)."""
        y, probs = self.attn(self.norm1(x), return_attention=return_attention)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp_drop(self.mlp(self.norm2(x))))
        return x, probs


def _with_pooler(model: ViT, state: dict, prefix: str = "") -> dict:
    """``state`` with ``model``'s pooler added when it is a state dict of ours without one
    (saved before the pooler was part of :class:`ViT`); the pooler's output is unused, so
    the model computes the same as before."""
    if prefix + "cls_token" in state and not any(prefix + k in state for k in _POOLER_KEYS):
        state = dict(state)
        for key in _POOLER_KEYS:
            state[prefix + key] = model.state_dict()[key].detach().clone()
    return state


def _keep_pooler_if_absent(module, state_dict, prefix, *args) -> None:
    """``load_state_dict`` pre-hook: a checkpoint of ours without the pooler keeps loading
    strictly (e.g. SpeechBrain's recoverables when resuming an older run)."""
    if prefix + "cls_token" in state_dict and not any(
        prefix + k in state_dict for k in _POOLER_KEYS
    ):
        for key in _POOLER_KEYS:
            state_dict[prefix + key] = getattr(module.pooler, key.split(".")[1]).detach().clone()


class ViT(Backbone):
    """Vision Transformer backbone on the resized log1p spectrogram.

    Arguments
    ---------
    img_size : int
        Side of the square input image the spectrogram is resized to.
    patch_size : int
        Patch size (must divide ``img_size``).
    in_chans : int
        Input channels (1: the spectrogram; 3 reproduces the published 3-channel copy).
    embed_dim : int
        Token dimension D (= embedding dimension).
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads.
    mlp_ratio : float
        MLP hidden size / D.
    qkv_bias : bool
        Bias in the qkv projections.
    drop_rate : float
        Dropout after the positional embedding, in the MLPs and after attention projections.
    drop_path_rate : float
        Stochastic depth, increasing linearly from 0 to this value over the blocks.
    layer_norm_eps : float
        Epsilon of every LayerNorm: 1e-6 (ours, timm) or 1e-12 (``transformers``, the
        published checkpoints).

    Example
    -------
    >>> model = ViT.from_config("tiny-cpu").eval()
    >>> x = model.input_from_spectrogram(torch.rand(2, 87, 513))
    >>> out = model(x, return_maps=True)
    >>> x.shape, out.embedding.shape, len(out.maps), out.maps[0].shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 64]), 4, torch.Size([2, 4, 65, 65]))
    >>> model.saliency(out.maps, method="rollout").shape
    torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"img_size={img_size} is not divisible by patch_size={patch_size}; "
                f"pick e.g. img_size={max(1, img_size // patch_size) * patch_size}."
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.embedding_dim = embed_dim
        self.layer_norm_eps = layer_norm_eps

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                drop=drop_rate,
                drop_path=dpr[i],
                layer_norm_eps=layer_norm_eps,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        # ViTModel's pooler (dense + tanh on the CLS token, :meth:`pool`): part of the
        # published model and its files, but its output is used by neither the published recipe
        # nor ours (the embedding is the token mean), so it is frozen (no gradient ever reaches
        # it; frozen, it also keeps DDP's unused-parameter check quiet).
        self.pooler = nn.Linear(embed_dim, embed_dim)
        self.pooler.requires_grad_(False)
        self._register_load_state_dict_pre_hook(_keep_pooler_if_absent, with_module=True)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_transformer_weights)

    @classmethod
    def from_config(cls, name: str, **overrides) -> ViT:
        """Build a named configuration of :data:`VIT_CONFIGS`, with kwargs overridden.

        Example
        -------
        >>> ViT.from_config("tiny-cpu", depth=2).grid_size
        8
        """
        if name not in VIT_CONFIGS:
            raise ValueError(
                f"Unknown ViT config {name!r}; choose one of {sorted(VIT_CONFIGS)} "
                "or call ViT(...) with explicit kwargs."
            )
        return cls(**{**VIT_CONFIGS[name], **overrides})

    def input_from_spectrogram(self, X: torch.Tensor) -> torch.Tensor:
        """(B, frames, bins) log1p spectrogram -> (B, in_chans, img_size, img_size) image."""
        return spectrogram_to_image(X, size=self.img_size, channels=self.in_chans)

    def convert_published_state_dict(self, state: dict) -> dict:
        """Map a ``transformers.ViTModel`` state dict (keys ``embeddings.*``,
        ``encoder.layer.*``: the published ``embedding_model.ckpt``) onto this model's keys;
        ours pass unchanged, except that a state dict of ours saved before the pooler existed
        gets this model's (unused) pooler, so those checkpoints keep loading strictly.

        Query, key and value are concatenated into ``qkv``; ``pooler.dense`` becomes ``pooler``
        (loaded, not dropped); the 3-channel patch embedding is summed to one channel when ``in_chans`` is 1 (the
        published input repeats the spectrogram on 3 channels, so the outputs are the same).
        """
        if "embeddings.cls_token" not in state:
            return _with_pooler(self, state)
        if self.layer_norm_eps != HF_LAYER_NORM_EPS:
            logger.warning(
                "Loading a transformers ViT checkpoint into a ViT with layer_norm_eps=%g; the "
                "published model used %g (set layer_norm_eps: %g for the same outputs).",
                self.layer_norm_eps,
                HF_LAYER_NORM_EPS,
                HF_LAYER_NORM_EPS,
            )
        state = rename_state_dict_keys(state, _PUBLISHED_KEY_RULES)
        for i in range(len(self.blocks)):
            for kind in ("weight", "bias"):
                parts = [f"blocks.{i}.attn.{name}.{kind}" for name in ("query", "key", "value")]
                if all(part in state for part in parts):
                    # (3 D, D) weight / (3 D,) bias, rows ordered q, k, v as Attention splits
                    state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state.pop(p) for p in parts])
        if "patch_embed.weight" in state:
            state["patch_embed.weight"] = fold_input_channels(
                state["patch_embed.weight"], self.in_chans
            )
        return state

    def forward(self, x: torch.Tensor, return_maps: bool = False) -> BackboneOutput:
        """Embed a batch of images.

        Arguments
        ---------
        x : torch.Tensor
            (B, in_chans, img_size, img_size) image.
        return_maps : bool
            Compute attention explicitly and return its probabilities per layer.

        Returns
        -------
        BackboneOutput
            embedding (B, embed_dim) = mean over the N + 1 final normed tokens, and maps: a
            tuple of ``depth`` tensors (B, heads, N + 1, N + 1), or ``()``.
        """
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ViT expects a (B, {expected[0]}, {expected[1]}, {expected[2]}) image, got "
                f"{tuple(x.shape)}; build it from a spectrogram with "
                "model.input_from_spectrogram(X)."
            )
        tokens, maps = self.tokens(x, return_maps=return_maps)
        return BackboneOutput(embedding=tokens.mean(dim=1), maps=maps)

    def tokens(
        self, x: torch.Tensor, return_maps: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, in_chans, img_size, img_size) image -> ((B, N + 1, D) final normed tokens, HF's
        ``last_hidden_state``; the per-layer attention maps or ``()``)."""
        B = x.shape[0]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, N + 1, D)
        x = self.pos_drop(x + self.pos_embed)
        maps = []
        for block in self.blocks:
            x, probs = block(x, return_attention=return_maps)
            if return_maps:
                maps.append(probs)
        return self.norm(x), tuple(maps)  # (B, N + 1, D)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N + 1, D) tokens of :meth:`tokens` -> (B, D) ``tanh(pooler(CLS))``, HF's
        ``pooler_output``. Not used by the recipes (published or ours)."""
        return torch.tanh(self.pooler(tokens[:, 0]))

    def saliency(
        self, maps: tuple, layers: Sequence[int] = (-1,), method: str = "mean"
    ) -> torch.Tensor:
        """Aggregate attention maps into a (B, h, w) patch-grid saliency, (time, frequency).

        * ``"mean"``: CLS-to-patch attention averaged over heads and the selected layers.
        * ``"rollout"``: attention rollout (Abnar & Zuidema, 2020): per layer, average the
          heads, add the identity and renormalise the rows; multiply these matrices from the
          first layer up to the deepest selected layer; take the CLS row over the patches.
          Only the deepest selected layer matters for this method.

        Arguments
        ---------
        maps : tuple of torch.Tensor
            The maps of ``forward(x, return_maps=True)``: (B, heads, N + 1, N + 1) per layer.
        layers : sequence of int
            Layer indices (negative counts from the last layer).
        method : str
            ``"mean"`` or ``"rollout"``.

        Returns
        -------
        torch.Tensor
            (B, grid, grid) non-negative saliency, grid = img_size / patch_size.
        """
        if not maps:
            raise ValueError("ViT.saliency got no maps; run the backbone with return_maps=True.")
        if method not in _METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {list(_METHODS)}.")
        n_layers = len(maps)
        layers = list(layers)
        if not layers or any(not -n_layers <= i < n_layers for i in layers):
            raise ValueError(
                f"layers={layers} is invalid for {n_layers} layers; give a non-empty list of "
                f"indices in [{-n_layers}, {n_layers - 1}]."
            )
        n_tokens = maps[0].shape[-1]
        if n_tokens != self.num_patches + 1:
            raise ValueError(
                f"maps have {n_tokens} tokens but this ViT has {self.num_patches} patches + CLS; "
                "pass the maps produced by this model."
            )
        if method == "mean":
            cls = torch.stack([maps[i][:, :, 0, 1:] for i in layers])  # (L, B, heads, N)
            cls = cls.mean(dim=(0, 2))  # (B, N)
        else:
            last = max(i % n_layers for i in layers)
            eye = torch.eye(n_tokens, dtype=maps[0].dtype, device=maps[0].device)
            rollout = None
            for i in range(last + 1):
                a = maps[i].mean(dim=1) + eye  # (B, N + 1, N + 1)
                a = a / a.sum(dim=-1, keepdim=True)
                rollout = a if rollout is None else a @ rollout
            cls = rollout[:, 0, 1:]  # (B, N)
        return cls.reshape(-1, self.grid_size, self.grid_size)  # (B, grid, grid)
