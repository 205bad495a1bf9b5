"""FocalNet backbone (Yang et al., 2022, "Focal Modulation Networks") in plain PyTorch.

Follows the structure of microsoft/FocalNet (``classification/focalnet.py``; also timm's
``focalnet.py`` and HF ``FocalNetModel``): a patch-embedding stem, four stages of
:class:`FocalNetBlock` with 2x2 patch-merging downsampling between them, a final LayerNorm and
global average pooling. No pretrained weights are loaded; the model is trained by the
project's classification recipe.

For AMT (activation-map thresholding) the backbone exposes, without forward hooks, the
*modulator* ``h(ctx_all)`` of the last block of each stage. For a (B, 1, 224, 224) input and the
``"base"`` config these maps have shapes::

    stage 0: (B, 128, 56, 56)   stage 1: (B, 256, 28, 28)
    stage 2: (B, 512, 14, 14)   stage 3: (B, 1024, 7, 7)

i.e. (B, embed_dim * 2**s, img_size / (patch_size * 2**s), same) for stage s, oriented
(time, frequency) because the input image is the resized spectrogram with time on the height
axis (see :func:`~audio_interpretability.models.image_input.spectrogram_to_image`).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

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

#: Named FocalNet configurations (constructor kwargs), used by :meth:`FocalNet.from_config`.
#: "base" = microsoft/focalnet-base (FocalNet-B, small receptive field), "base-lrf" = the large
#: receptive field variant; "tiny-cpu" is a small model for tests and CPU experiments.
FOCALNET_CONFIGS: dict[str, dict] = {
    "tiny": dict(
        img_size=224,
        patch_size=4,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        focal_levels=2,
        focal_windows=3,
        drop_path_rate=0.2,
    ),
    "small": dict(
        img_size=224,
        patch_size=4,
        embed_dim=96,
        depths=(2, 2, 18, 2),
        focal_levels=2,
        focal_windows=3,
        drop_path_rate=0.3,
    ),
    "base": dict(
        img_size=224,
        patch_size=4,
        embed_dim=128,
        depths=(2, 2, 18, 2),
        focal_levels=2,
        focal_windows=3,
        drop_path_rate=0.5,
    ),
    "base-lrf": dict(
        img_size=224,
        patch_size=4,
        embed_dim=128,
        depths=(2, 2, 18, 2),
        focal_levels=3,
        focal_windows=3,
        drop_path_rate=0.5,
    ),
    "tiny-cpu": dict(
        img_size=64,
        patch_size=4,
        embed_dim=24,
        depths=(1, 1, 2, 1),
        focal_levels=2,
        focal_windows=3,
        drop_path_rate=0.0,
    ),
}

_AGGREGATIONS = ("mean", "max", "prod")

#: ``transformers.FocalNetBackbone`` state-dict keys -> ours (applied in order), for the
#: checkpoints of SpeechBrain's ESC-50 FocalNet recipe (microsoft/focalnet-base fine-tuned).
_PUBLISHED_KEY_RULES = (
    (r"^focalnet\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^focalnet\.embeddings\.norm\.", "patch_embed.norm."),
    (r"^focalnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^focalnet\.encoder\.stages\.(\d+)\.downsample\.projection\.", r"stages.\1.downsample.proj."),
    (r"^focalnet\.encoder\.stages\.(\d+)\.downsample\.norm\.", r"stages.\1.downsample.norm."),
    (r"\.modulation\.projection_in\.", ".modulation.f."),
    (r"\.modulation\.projection_context\.", ".modulation.h."),
    (r"\.modulation\.projection_out\.", ".modulation.proj."),
    (r"\.modulation\.layernorm\.", ".modulation.ln."),
    (r"^focalnet\.layernorm\.", "norm."),
)


class Mlp(nn.Module):
    """Two-layer MLP with GELU, applied on the last (channel) axis.

    Arguments
    ---------
    dim : int
        Input and output channels.
    hidden_dim : int
        Hidden channels.
    drop : float
        Dropout after each linear layer.

    Example
    -------
    >>> Mlp(8, 32)(torch.randn(2, 5, 5, 8)).shape
    torch.Size([2, 5, 5, 8])
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FocalModulation(nn.Module):
    """Focal modulation: gated multi-level depthwise-conv context modulating a query.

    ``f`` projects each position to a query ``q``, a context ``ctx`` and ``focal_level + 1``
    gates. Level ``k`` applies a depthwise conv of kernel ``focal_factor * k + focal_window``
    followed by GELU to the previous level's context; the levels plus a global context (GELU of
    the spatial mean of the last level) are summed with their gates into ``ctx_all``. The
    modulator is ``h(ctx_all)`` (1x1 conv) and the output is ``proj(q * modulator)``.

    Arguments
    ---------
    dim : int
        Channels C.
    focal_window : int
        Kernel size of the first focal level.
    focal_level : int
        Number of focal levels.
    focal_factor : int
        Kernel size increment per level.
    bias : bool
        Bias in ``f`` and ``h``.
    proj_drop : float
        Dropout after the output projection.
    use_postln_in_modulation : bool
        LayerNorm on ``q * modulator`` before the projection.
    normalize_modulator : bool
        Divide ``ctx_all`` by ``focal_level + 1``.

    Example
    -------
    >>> mod = FocalModulation(dim=8, focal_window=3, focal_level=2)
    >>> out, modulator = mod(torch.randn(2, 6, 6, 8))
    >>> out.shape, modulator.shape
    (torch.Size([2, 6, 6, 8]), torch.Size([2, 8, 6, 6]))
    """

    def __init__(
        self,
        dim: int,
        focal_window: int,
        focal_level: int,
        focal_factor: int = 2,
        bias: bool = True,
        proj_drop: float = 0.0,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + (focal_level + 1), bias=bias)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kernel_sizes = [focal_factor * k + focal_window for k in range(focal_level)]
        self.focal_layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    dim, dim, kernel_size=k, stride=1, groups=dim, padding=k // 2, bias=False
                ),
                nn.GELU(),
            )
            for k in self.kernel_sizes
        )
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Modulate a (B, H, W, C) map.

        Returns
        -------
        out : torch.Tensor
            (B, H, W, C) modulated features.
        modulator : torch.Tensor
            (B, C, H, W) ``h(ctx_all)``, the map AMT thresholds.
        """
        C = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2)  # (B, 2C + L + 1, H, W)
        q, ctx, gates = torch.split(x, (C, C, self.focal_level + 1), dim=1)
        ctx_all = 0.0
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = focal_layer(ctx)  # (B, C, H, W)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        modulator = self.h(ctx_all)  # (B, C, H, W)
        out = (q * modulator).permute(0, 2, 3, 1)  # (B, H, W, C)
        out = self.proj_drop(self.proj(self.ln(out)))
        return out, modulator


class FocalNetBlock(nn.Module):
    """Pre-norm residual block: focal modulation then MLP (post-norm variant optional).

    Arguments
    ---------
    dim : int
        Channels C.
    mlp_ratio : float
        MLP hidden size / C.
    drop : float
        Dropout in the MLP and after the modulation projection.
    drop_path : float
        Stochastic-depth probability of both residual branches.
    focal_level : int
        Number of focal levels.
    focal_window : int
        Kernel size of the first focal level.
    use_layerscale : bool
        Learnable per-channel residual scales initialised to ``layerscale_value``.
    layerscale_value : float
        Initial layer-scale value.
    use_postln : bool
        Normalise the branch outputs instead of the inputs.
    use_postln_in_modulation : bool
        LayerNorm inside the modulation.
    normalize_modulator : bool
        Divide the context by the number of levels.

    Example
    -------
    >>> block = FocalNetBlock(dim=8)
    >>> out, modulator = block(torch.randn(2, 6, 6, 8))
    >>> out.shape, modulator.shape
    (torch.Size([2, 6, 6, 8]), torch.Size([2, 8, 6, 6]))
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        focal_level: int = 2,
        focal_window: int = 3,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim,
            focal_window=focal_window,
            focal_level=focal_level,
            proj_drop=drop,
            use_postln_in_modulation=use_postln_in_modulation,
            normalize_modulator=normalize_modulator,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        if use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))
        else:
            self.gamma_1 = 1.0
            self.gamma_2 = 1.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> ((B, H, W, C), modulator (B, C, H, W))."""
        shortcut = x
        y, modulator = self.modulation(x if self.use_postln else self.norm1(x))
        if self.use_postln:
            y = self.norm1(y)
        x = shortcut + self.drop_path(self.gamma_1 * y)
        y = self.norm2(self.mlp(x)) if self.use_postln else self.mlp(self.norm2(x))
        x = x + self.drop_path(self.gamma_2 * y)
        return x, modulator


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (stem) or 2x2 patch merging (downsampling) + LayerNorm.

    Arguments
    ---------
    patch_size : int
        Kernel size and stride of the conv.
    in_chans : int
        Input channels.
    embed_dim : int
        Output channels.

    Example
    -------
    >>> PatchEmbed(patch_size=4, in_chans=1, embed_dim=8)(torch.randn(2, 1, 32, 32)).shape
    torch.Size([2, 8, 8, 8])
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H / p, W / p, embed_dim) channels-last."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class FocalNetStage(nn.Module):
    """A stack of :class:`FocalNetBlock` followed by optional 2x2 downsampling.

    Arguments
    ---------
    dim : int
        Channels of the blocks.
    depth : int
        Number of blocks.
    out_dim : int or None
        Channels after downsampling; ``None`` for no downsampling (last stage).
    drop_path : sequence of float
        Stochastic-depth probability of each block.
    **block_kwargs
        Passed to every :class:`FocalNetBlock`.

    Example
    -------
    >>> stage = FocalNetStage(dim=8, depth=2, out_dim=16, drop_path=(0.0, 0.0))
    >>> x, modulator = stage(torch.randn(2, 8, 8, 8))
    >>> x.shape, modulator.shape
    (torch.Size([2, 4, 4, 16]), torch.Size([2, 8, 8, 8]))
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        out_dim: int | None,
        drop_path: Sequence[float],
        **block_kwargs,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalNetBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)
        )
        self.downsample = (
            PatchEmbed(patch_size=2, in_chans=dim, embed_dim=out_dim) if out_dim else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> (downsampled output, modulator (B, C, H, W) of the last block)."""
        for block in self.blocks:
            x, modulator = block(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))  # (B, H/2, W/2, out_dim)
        return x, modulator


class FocalNet(Backbone):
    """FocalNet image backbone on the resized log1p spectrogram.

    Arguments
    ---------
    img_size : int
        Side of the square input image the spectrogram is resized to.
    patch_size : int
        Patch size of the stem.
    in_chans : int
        Input channels (1: the spectrogram; 3 reproduces the published 3-channel copy).
    embed_dim : int
        Channels of the first stage; stage s has ``embed_dim * 2**s``.
    depths : sequence of int
        Blocks per stage.
    focal_levels : int or sequence of int
        Focal levels (one value or one per stage).
    focal_windows : int or sequence of int
        First focal kernel size (one value or one per stage).
    mlp_ratio : float
        MLP hidden size / channels.
    drop_rate : float
        Dropout after the stem, in the MLPs and after the modulation projections.
    drop_path_rate : float
        Stochastic depth, increasing linearly from 0 to this value over all blocks.
    use_layerscale : bool
        Layer scale on the residual branches.
    layerscale_value : float
        Initial layer-scale value.
    use_postln : bool
        Post-norm blocks.
    normalize_modulator : bool
        Divide the focal context by the number of levels.
    final_norm : bool
        Pool the final LayerNorm's output (ours, as microsoft FocalNet and timm). False pools
        the last stage's output before that norm, as the published recipe (``transformers``
        ``FocalNetBackbone(x).feature_maps[-1]``); the norm's weights stay in the state dict
        either way, so the released checkpoints load strictly.

    Example
    -------
    >>> model = FocalNet.from_config("tiny-cpu").eval()
    >>> x = model.input_from_spectrogram(torch.rand(2, 87, 513))
    >>> out = model(x, return_maps=True)
    >>> x.shape, out.embedding.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 192]))
    >>> [tuple(m.shape) for m in out.maps]
    [(2, 24, 16, 16), (2, 48, 8, 8), (2, 96, 4, 4), (2, 192, 2, 2)]
    >>> model.saliency(out.maps, stages=(-2, -1), aggregation="prod").shape
    torch.Size([2, 4, 4])
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 1,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        focal_levels: int | Sequence[int] = 2,
        focal_windows: int | Sequence[int] = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        normalize_modulator: bool = False,
        final_norm: bool = True,
    ):
        super().__init__()
        self.final_norm = final_norm
        self.num_stages = len(depths)
        levels = self._per_stage(focal_levels, "focal_levels")
        windows = self._per_stage(focal_windows, "focal_windows")
        self.stride = patch_size * 2 ** (self.num_stages - 1)
        if img_size % self.stride:
            raise ValueError(
                f"img_size={img_size} must be divisible by patch_size * 2**(stages - 1) = "
                f"{self.stride}; pick e.g. img_size={max(1, img_size // self.stride) * self.stride}."
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        dims = [embed_dim * 2**i for i in range(self.num_stages)]
        self.embedding_dim = dims[-1]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.stages.append(
                FocalNetStage(
                    dims[i],
                    depth,
                    out_dim=dims[i + 1] if i < self.num_stages - 1 else None,
                    drop_path=dpr[first : first + depth],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    focal_level=levels[i],
                    focal_window=windows[i],
                    use_layerscale=use_layerscale,
                    layerscale_value=layerscale_value,
                    use_postln=use_postln,
                    normalize_modulator=normalize_modulator,
                )
            )
        self.norm = nn.LayerNorm(self.embedding_dim)
        self.apply(init_transformer_weights)

    def _per_stage(self, value: int | Sequence[int], name: str) -> list[int]:
        if isinstance(value, int):
            return [value] * self.num_stages
        value = list(value)
        if len(value) != self.num_stages:
            raise ValueError(
                f"{name} has {len(value)} entries but depths has {self.num_stages} stages; "
                "give one int or one value per stage."
            )
        return value

    @classmethod
    def from_config(cls, name: str, **overrides) -> FocalNet:
        """Build a named configuration of :data:`FOCALNET_CONFIGS`, with kwargs overridden.

        Example
        -------
        >>> FocalNet.from_config("tiny-cpu", embed_dim=16).embedding_dim
        128
        """
        if name not in FOCALNET_CONFIGS:
            raise ValueError(
                f"Unknown FocalNet config {name!r}; choose one of {sorted(FOCALNET_CONFIGS)} "
                "or call FocalNet(...) with explicit kwargs."
            )
        return cls(**{**FOCALNET_CONFIGS[name], **overrides})

    def input_from_spectrogram(self, X: torch.Tensor) -> torch.Tensor:
        """(B, frames, bins) log1p spectrogram -> (B, in_chans, img_size, img_size) image."""
        return spectrogram_to_image(X, size=self.img_size, channels=self.in_chans)

    def convert_published_state_dict(self, state: dict) -> dict:
        """Map a ``transformers.FocalNetBackbone`` state dict (keys ``focalnet.*``, the
        published ``embedding_model.ckpt``) onto this model's keys; ours pass unchanged.

        The 3-channel stem is summed to one channel when ``in_chans`` is 1 (the published
        input repeats the spectrogram on 3 channels, so the outputs are the same).

        Raises
        ------
        ValueError
            The checkpoint is the published one but this model pools the final LayerNorm
            (``final_norm=True``), so the released head would read other embeddings.
        """
        if not any(key.startswith("focalnet.") for key in state):
            return state
        if self.final_norm:
            raise ValueError(
                "the checkpoint is a transformers FocalNetBackbone (SpeechBrain's released "
                "FocalNet), whose recipe pools the last stage *before* the final LayerNorm; "
                "build FocalNet with final_norm: False (see docs/CLASSIFIERS.md)."
            )
        state = rename_state_dict_keys(state, _PUBLISHED_KEY_RULES)
        stem = "patch_embed.proj.weight"
        if stem in state:
            state[stem] = fold_input_channels(state[stem], self.in_chans)
        return state

    def forward(self, x: torch.Tensor, return_maps: bool = False) -> BackboneOutput:
        """Embed a batch of images.

        Arguments
        ---------
        x : torch.Tensor
            (B, in_chans, H, W) image, H and W divisible by ``patch_size * 2**(stages - 1)``.
        return_maps : bool
            Also return the modulator of the last block of each stage.

        Returns
        -------
        BackboneOutput
            embedding (B, embed_dim * 2**(stages - 1)) (final LayerNorm unless
            ``final_norm=False``, then global average pool) and maps: one (B, embed_dim * 2**s, H / (patch_size * 2**s), W / ...) tensor
            per stage s, or ``()``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"FocalNet expects a (B, {self.in_chans}, H, W) image, got {tuple(x.shape)}; "
                "build it from a spectrogram with model.input_from_spectrogram(X)."
            )
        if x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(
                f"FocalNet input sides {tuple(x.shape[2:])} must be divisible by {self.stride}; "
                "use model.input_from_spectrogram(X), which resizes to img_size."
            )
        x = self.pos_drop(self.patch_embed(x))  # (B, H/p, W/p, embed_dim)
        maps = []
        for stage in self.stages:
            x, modulator = stage(x)
            maps.append(modulator)
        if self.final_norm:
            x = self.norm(x)  # (B, h, w, D)
        embedding = x.mean(dim=(1, 2))  # (B, D)
        return BackboneOutput(embedding=embedding, maps=tuple(maps) if return_maps else ())

    def saliency(
        self, maps: tuple, stages: Sequence[int] = (-1,), aggregation: str = "mean"
    ) -> torch.Tensor:
        """Aggregate modulators into a (B, h, w) saliency map, oriented (time, frequency).

        Each selected stage's modulator is reduced by its channel-wise L2 norm, bilinearly
        resized to the largest selected grid, and the stages are combined by ``aggregation``.

        Arguments
        ---------
        maps : tuple of torch.Tensor
            The maps of ``forward(x, return_maps=True)``.
        stages : sequence of int
            Stage indices (negative counts from the last stage).
        aggregation : str
            ``"mean"``, ``"max"`` or ``"prod"`` over the selected stages.

        Returns
        -------
        torch.Tensor
            (B, h, w) non-negative saliency on the largest selected stage grid.
        """
        if not maps:
            raise ValueError(
                "FocalNet.saliency got no maps; run the backbone with return_maps=True."
            )
        if aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"Unknown aggregation {aggregation!r}; choose one of {list(_AGGREGATIONS)}."
            )
        stages = list(stages)
        if not stages or any(not -len(maps) <= s < len(maps) for s in stages):
            raise ValueError(
                f"stages={stages} is invalid for {len(maps)} stages; give a non-empty list of "
                f"indices in [{-len(maps)}, {len(maps) - 1}]."
            )
        norms = [maps[s].norm(dim=1) for s in stages]  # each (B, H_s, W_s)
        size = max((n.shape[-2:] for n in norms), key=lambda hw: hw[0] * hw[1])
        resized = torch.stack(
            [
                F.interpolate(n.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
                for n in norms
            ]
        )  # (S, B, h, w)
        if aggregation == "mean":
            return resized.mean(dim=0)
        if aggregation == "max":
            return resized.amax(dim=0)
        return resized.prod(dim=0)
