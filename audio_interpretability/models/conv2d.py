"""The convolutional ESC-50 classifier of SpeechBrain's PIQ / L2I recipes, as a Backbone.

``speechbrain.lobes.models.PIQ.Conv2dEncoder_v2`` (the ``embedding_model`` of the published
``l2i_conv2d.yaml``) reads the log1p linear spectrogram X itself (no mel filterbank): four
4x4 stride-2 convolutions with batch norm and ReLU, then a residual block, giving a
(B, dim, frames // 16, bins // 16) map. The published recipe pools it to the embedding with
``mean((-1, -2))`` and classifies it with an ECAPA ``Classifier`` (our
:class:`~audio_interpretability.models.heads.CosineHead` with ``scale: 1.0, lin_blocks: 1``).

:class:`Conv2dEncoder` is that class with the
:class:`~audio_interpretability.models.base.Backbone` interface added, and nothing else: same
parameters, so the published ``embedding_modelft.ckpt`` loads strictly. Its one intermediate
map is the encoder output the L2I ``PsiOptimized`` reads.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.PIQ import Conv2dEncoder_v2

from audio_interpretability.models.base import Backbone, BackboneOutput

N_DOWNSAMPLINGS = 4  # four stride-2 convolutions


class Conv2dEncoder(Conv2dEncoder_v2, Backbone):
    """``Conv2dEncoder_v2`` on log1p linear spectrograms, with the Backbone interface.

    Maps (``return_maps=True``), for an input (B, T, F), floor divisions::

        maps[0]  encoder output  (B, dim, T // 16, F // 16)   (5 s, 513 bins: (B, 256, 26, 32))

    Arguments
    ---------
    dim : int
        Channels of every convolution (published: 256); also the embedding dimension.

    Example
    -------
    >>> model = Conv2dEncoder(dim=8).eval()
    >>> X = torch.rand(2, 87, 513)  # log1p magnitude of 1 s at 16 kHz
    >>> out = model(model.input_from_spectrogram(X), return_maps=True)
    >>> out.embedding.shape, [tuple(m.shape) for m in out.maps]
    (torch.Size([2, 8]), [(2, 8, 5, 32)])
    >>> model.saliency(out.maps).shape
    torch.Size([2, 5, 32])
    """

    def __init__(self, dim: int = 256):
        super().__init__(dim=dim)
        self.embedding_dim = dim

    def input_from_spectrogram(self, X: torch.Tensor) -> torch.Tensor:
        """The log1p magnitude spectrogram itself (published ``use_melspectra_log1p: False``).

        Arguments
        ---------
        X : torch.Tensor
            (B, frames, bins) log1p linear magnitude, masked or not.

        Returns
        -------
        torch.Tensor
            ``X`` (B, frames, bins).
        """
        if X.dim() != 3:
            raise ValueError(
                f"Conv2dEncoder expects (batch, frames, bins) log1p magnitudes, got shape "
                f"{tuple(X.shape)}: pass the front-end's X"
            )
        return X

    def forward(self, x: torch.Tensor, return_maps: bool = False) -> BackboneOutput:
        """Embed a batch of log1p magnitude spectrograms.

        Arguments
        ---------
        x : torch.Tensor
            (B, frames, bins), frames and bins >= 16.
        return_maps : bool
            Also return the encoder output (see the class docstring).

        Returns
        -------
        BackboneOutput
            embedding (B, dim) (mean over time and frequency, as published) and maps.
        """
        if x.dim() != 3 or min(x.shape[1:]) < 2**N_DOWNSAMPLINGS:
            raise ValueError(
                f"Conv2dEncoder expects (batch, frames, bins) with at least "
                f"{2**N_DOWNSAMPLINGS} frames and bins, got shape {tuple(x.shape)}"
            )
        h = super().forward(x)  # (B, dim, T // 16, F // 16)
        embedding = h.mean(dim=(-1, -2))  # (B, dim)
        return BackboneOutput(embedding=embedding, maps=(h,) if return_maps else ())

    def saliency(self, maps: tuple, **options) -> torch.Tensor:
        """Channel-wise L2 norm of the encoder output: (B, T // 16, F // 16).

        Arguments
        ---------
        maps : tuple of torch.Tensor
            The maps returned by ``forward(x, return_maps=True)``.
        **options
            None are supported (the argument exists for the common Backbone interface).

        Returns
        -------
        torch.Tensor
            (B, time, frequency) saliency.
        """
        if options:
            raise ValueError(f"Conv2dEncoder.saliency takes no options, got {sorted(options)}")
        if len(maps) == 0:
            raise ValueError("Conv2dEncoder.saliency got no maps: call it with return_maps=True")
        return torch.linalg.vector_norm(maps[0], dim=1)
