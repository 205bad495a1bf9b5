"""Pieces shared by the image backbones (FocalNet, ViT): spectrogram <-> image resizing.

The published ESC-50 FocalNet / ViT recipes resize the log1p linear spectrogram X (B, frames,
bins) to the backbone's square input resolution (torchvision ``Resize``, bilinear with
antialiasing) and repeat it to 3 channels. We keep the same resize but default to one channel
(``in_chans=1`` in our backbones). The image's height axis is time and its width axis is
frequency, so every map computed on the image (modulators, attention grids) is oriented
(time, frequency) like the spectrogram.

:func:`image_to_spectrogram` maps a (B, h, w) saliency map from any image grid back onto the
(frames, bins) grid of X, which is what an interpreter needs to build a mask. :class:`DropPath` (stochastic depth) is
the residual-branch regulariser both backbones use.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spectrogram_to_image(X: torch.Tensor, size: int = 224, channels: int = 1) -> torch.Tensor:
    """Resize a (B, frames, bins) spectrogram to a (B, channels, size, size) image.

    Bilinear interpolation with antialiasing (as torchvision's ``Resize`` on tensors), so
    downsampling the 513 frequency bins does not alias. Differentiable with respect to ``X``.

    Arguments
    ---------
    X : torch.Tensor
        (B, frames, bins) log1p magnitude spectrogram (possibly masked).
    size : int
        Side of the square output image.
    channels : int
        Number of (identical) output channels; 3 reproduces the published 3-channel input.

    Returns
    -------
    torch.Tensor
        (B, channels, size, size) image; height = time, width = frequency.

    Example
    -------
    >>> X = torch.rand(2, 87, 513)
    >>> spectrogram_to_image(X, size=64).shape
    torch.Size([2, 1, 64, 64])
    >>> spectrogram_to_image(X, size=32, channels=3).shape
    torch.Size([2, 3, 32, 32])
    """
    if X.ndim != 3:
        raise ValueError(
            f"spectrogram_to_image expects a (B, frames, bins) spectrogram, got shape "
            f"{tuple(X.shape)}; add a batch dimension with X.unsqueeze(0) for a single item."
        )
    if size < 1 or channels < 1:
        raise ValueError(
            f"size and channels must be positive, got size={size}, channels={channels}."
        )
    image = F.interpolate(
        X.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )  # (B, 1, size, size)
    if channels > 1:
        image = image.expand(-1, channels, -1, -1)  # (B, channels, size, size)
    return image


def image_to_spectrogram(saliency: torch.Tensor, n_frames: int, n_bins: int) -> torch.Tensor:
    """Resize a (B, h, w) map on the image grid back to the spectrogram grid (B, frames, bins).

    Plain bilinear interpolation (no antialiasing: maps are upsampled), the inverse
    orientation-preserving counterpart of :func:`spectrogram_to_image`.

    Arguments
    ---------
    saliency : torch.Tensor
        (B, h, w) map in (time, frequency) orientation, e.g. ``backbone.saliency(maps)``.
    n_frames : int
        Number of STFT frames of the target spectrogram.
    n_bins : int
        Number of frequency bins of the target spectrogram.

    Returns
    -------
    torch.Tensor
        (B, n_frames, n_bins) map.

    Example
    -------
    >>> image_to_spectrogram(torch.rand(2, 7, 7), n_frames=87, n_bins=513).shape
    torch.Size([2, 87, 513])
    """
    if saliency.ndim != 3:
        raise ValueError(
            f"image_to_spectrogram expects a (B, h, w) map, got shape {tuple(saliency.shape)}; "
            "squeeze the channel dimension (or add the batch one) first."
        )
    return F.interpolate(
        saliency.unsqueeze(1), size=(n_frames, n_bins), mode="bilinear", align_corners=False
    ).squeeze(1)  # (B, n_frames, n_bins)


def fold_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a patch-embedding conv weight (D, C, p, p) trained on C identical input channels.

    The published recipes feed the spectrogram repeated to 3 channels; a conv on such an input
    equals the conv with the channel-summed kernel on one channel. So a 3-channel weight is
    summed to (D, 1, p, p) when ``in_chans`` is 1; any other combination is returned unchanged
    (the strict load then reports the shape mismatch).

    Example
    -------
    >>> fold_input_channels(torch.ones(8, 3, 4, 4), in_chans=1).shape
    torch.Size([8, 1, 4, 4])
    """
    if in_chans == 1 and weight.ndim == 4 and weight.shape[1] > 1:
        return weight.sum(dim=1, keepdim=True)  # (D, 1, p, p)
    return weight


def init_transformer_weights(module: torch.nn.Module) -> None:
    """ViT / FocalNet initialisation (``model.apply(init_transformer_weights)``): truncated
    normal (std 0.02) Linear weights with zero biases, unit LayerNorm weights with zero biases.
    """
    if isinstance(module, torch.nn.Linear):
        torch.nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)


class DropPath(torch.nn.Module):
    """Stochastic depth: drop a whole residual branch per sample during training.

    In training mode each sample's branch output is zeroed with probability ``drop_prob`` and
    the kept ones are scaled by ``1 / (1 - drop_prob)``; in eval mode it is the identity.

    Arguments
    ---------
    drop_prob : float
        Probability of dropping the branch, in [0, 1).

    Example
    -------
    >>> drop = DropPath(0.5).eval()
    >>> x = torch.ones(4, 3)
    >>> bool(torch.equal(drop(x), x))
    True
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...) with whole samples zeroed (training only)."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
