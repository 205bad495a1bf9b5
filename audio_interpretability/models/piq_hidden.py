"""The classifier representation PIQ's decoder reads (``hcat`` of the published recipe).

PIQ (Paissan et al. 2023) quantises and decodes the *last hidden map* of the classifier, a
(B, D, h, w) tensor oriented (time, frequency). The published ``InterpreterBrain.
classifier_forward`` takes it, per backbone, as:

* Conv2d encoder (``piq.yaml``): the encoder output (B, 256, T/16, 32), read as it is
  (:class:`BackboneMap` ``index: 0`` of ``models/conv2d.Conv2dEncoder``);
* FocalNet (``piq_focalnet.yaml``): ``FocalNetBackbone(x).feature_maps[-1]``, the last stage
  output *before* the final LayerNorm, (B, 1024, 7, 7) at 224 x 224, upsampled 2x
  (bilinear) to (B, 1024, 14, 14) "to avoid OOM";
* ViT (``piq_vit.yaml``): ``last_hidden_state`` (final LayerNorm) without the CLS token,
  reshaped to the patch grid, (B, 768, 14, 14).

Our backbones expose other maps (CNN14: the block outputs the L-MAC decoder reads; FocalNet:
the modulators; ViT: the attention probabilities, see ``models/base.py``), so each reader
below recomputes the classifier pass and returns the hidden map next to the logits, in one
pass. The YAML picks the reader (``hidden_map``): no model-type branch in the interpreter.

For CNN14 there is no published PIQ (ours: ``piq_cnn14.yaml``); :class:`BackboneMap` with
``index: 0`` reads the deepest
block output (block 6, (B, emb_dim, T/32, mel_bins/32)), CNN14's analogue of the Conv2d
encoder's last map. It lives on the mel axis and is coarse (80 mels: 2 frequency rows), so its
decoded mask is resized to X's (frames, bins) by the interpreter (``mask_alignment: resize``).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from audio_interpretability.models.base import AudioClassifier, ClassifierOutput

__all__ = ["BackboneMap", "FocalNetLastStage", "HiddenMapReader", "ViTPatchTokens"]


class HiddenMapReader:
    """Classifier pass that also returns the hidden map PIQ decodes.

    Arguments
    ---------
    upsample : int
        Integer factor of a bilinear upsampling of the hidden map (published FocalNet: 2;
        torchvision's ``resize`` of the published recipe is this interpolation).
    """

    def __init__(self, upsample: int = 1):
        if int(upsample) < 1:
            raise ValueError(f"upsample must be a positive integer, got {upsample}; pass 1 or 2")
        self.upsample = int(upsample)

    def hidden(self, model: AudioClassifier, X: torch.Tensor):
        """(embedding (B, D), hidden map (B, D', h, w)) of a (B, frames, bins) spectrogram."""
        raise NotImplementedError

    def __call__(self, model: AudioClassifier, X: torch.Tensor) -> ClassifierOutput:
        """Classify ``X`` (B, frames, bins); ``maps`` is the one hidden map ``(hcat,)``.

        Returns
        -------
        ClassifierOutput
            logits (B, C), embedding (B, D), maps ``(hcat,)`` with hcat (B, D', h, w).
        """
        embedding, hcat = self.hidden(model, X)
        if self.upsample > 1:
            size = (self.upsample * hcat.shape[-2], self.upsample * hcat.shape[-1])
            hcat = F.interpolate(hcat, size=size, mode="bilinear", align_corners=False)
        logits = model.classifier(embedding)
        return ClassifierOutput(logits=logits, embedding=embedding, maps=(hcat,))


class BackboneMap(HiddenMapReader):
    """One of the maps a backbone returns with ``return_maps=True`` (CNN14: ``index 0`` is
    block 6, (B, emb_dim, T/32, mel_bins/32)).

    Example
    -------
    >>> from audio_interpretability.models.cnn14 import Cnn14
    >>> from audio_interpretability.models.heads import LinearHead
    >>> model = AudioClassifier(Cnn14(emb_dim=32, base_channels=4), LinearHead(32, 5)).eval()
    >>> out = BackboneMap(index=0)(model, torch.rand(2, 87, 513))
    >>> out.logits.shape, out.maps[0].shape
    (torch.Size([2, 5]), torch.Size([2, 32, 2, 2]))
    """

    def __init__(self, index: int = 0, upsample: int = 1):
        super().__init__(upsample)
        self.index = int(index)

    def hidden(self, model, X):
        out = model.embedding_model(model.embedding_model.input_from_spectrogram(X), True)
        return out.embedding, out.maps[self.index]


class FocalNetLastStage(HiddenMapReader):
    """FocalNet's last stage output before the final LayerNorm, (B, D, h, w), as the
    published ``feature_maps[-1]`` (published ``upsample``: 2). The embedding is the model's
    own (final LayerNorm pooled when ``final_norm``).

    Example
    -------
    >>> from audio_interpretability.models.focalnet import FocalNet
    >>> from audio_interpretability.models.heads import LinearHead
    >>> net = FocalNet.from_config("tiny-cpu")
    >>> model = AudioClassifier(net, LinearHead(net.embedding_dim, 5)).eval()
    >>> out = FocalNetLastStage(upsample=2)(model, torch.rand(2, 87, 513))
    >>> out.maps[0].shape
    torch.Size([2, 192, 4, 4])
    """

    def __init__(self, upsample: int = 2):
        super().__init__(upsample)

    def hidden(self, model, X):
        net = model.embedding_model
        x = net.pos_drop(net.patch_embed(net.input_from_spectrogram(X)))  # (B, h0, w0, C)
        for stage in net.stages:
            x, _ = stage(x)  # (B, h, w, D) after the last stage
        hcat = x.permute(0, 3, 1, 2).contiguous()  # (B, D, h, w), before the final norm
        pooled = net.norm(x) if net.final_norm else x
        return pooled.mean(dim=(1, 2)), hcat  # as FocalNet.forward


class ViTPatchTokens(HiddenMapReader):
    """ViT's final normed patch tokens (``last_hidden_state`` without CLS) on the patch grid,
    (B, D, grid, grid), rows = time. The embedding is the mean of all tokens, as ours.

    Example
    -------
    >>> from audio_interpretability.models.vit import ViT
    >>> from audio_interpretability.models.heads import LinearHead
    >>> net = ViT.from_config("tiny-cpu")
    >>> model = AudioClassifier(net, LinearHead(net.embedding_dim, 5)).eval()
    >>> ViTPatchTokens()(model, torch.rand(2, 87, 513)).maps[0].shape[-2:]
    torch.Size([8, 8])
    """

    def hidden(self, model, X):
        net = model.embedding_model
        tokens, _ = net.tokens(net.input_from_spectrogram(X))  # (B, N + 1, D)
        patches = tokens[:, 1:].transpose(1, 2)  # (B, D, N)
        hcat = patches.reshape(patches.shape[0], -1, net.grid_size, net.grid_size)
        return tokens.mean(dim=1), hcat
