"""CNN14 (PANNs, Kong et al. 2020), the classifier L-MAC explains.

Same layers, parameter names and computation as ``speechbrain.lobes.models.Cnn14.Cnn14``, so
checkpoints trained with the published ESC-50 recipes (``embedding_model.ckpt``) load strictly;
the channel widths are configurable (``base_channels``, ``emb_dim``) so tests and smoke runs can
use a tiny model. It implements the :class:`~audio_interpretability.models.base.Backbone`
interface: ``input_from_spectrogram`` (log1p linear magnitude -> log1p mel), ``forward``
(embedding and, on request, the block outputs the L-MAC decoder reads) and ``saliency``.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.processing.features import Filterbank
from torch.nn.modules import module as _module

from audio_interpretability.models.base import Backbone, BackboneOutput

NORM_TYPES = ("bn", "in", "ln")
N_POOLINGS = 5  # blocks 1-5 halve time and frequency; block 6 does not pool
#: ``frozen_gemm``: a frozen convolution runs as unfold + matrix products when its weight holds
#: at least this many bytes and at least as many output channels as output positions per
#: clip (the paper-size blocks 5 and 6), so that oneDNN's per-call reordered copy of the
#: weight (0.14 GiB for ``conv_block6.conv2``) is never made.
FROZEN_GEMM_MIN_BYTES = 16 << 20
#: A frozen block's backward runs on as many clips at a time as keep one of its fp32 maps under
#: this size (at the paper size: block 1 clip by clip, block 2 three clips, the others whole).
FROZEN_BACKWARD_CHUNK_BYTES = 16 << 20


def _make_norm(norm_type: str, channels: int) -> torch.nn.Module:
    """Normalisation layer of SpeechBrain's CNN14 for ``norm_type`` in ("bn", "in", "ln")."""
    if norm_type == "bn":
        return torch.nn.BatchNorm2d(channels)
    if norm_type == "in":
        return torch.nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)
    if norm_type == "ln":
        return torch.nn.GroupNorm(1, channels)
    raise ValueError(f"Unknown norm_type {norm_type!r}: use one of {NORM_TYPES}")


class ConvBlock(torch.nn.Module):
    """Two 3x3 conv + norm + ReLU layers, then an optional 2x2 average pooling.

    Arguments
    ---------
    in_channels : int
        Input channels.
    out_channels : int
        Output channels.
    norm_type : str
        "bn" (batch norm), "in" (instance norm) or "ln" (layer norm as GroupNorm(1, C)).
    pool : bool
        Apply a 2x2 average pooling at the end (blocks 1-5; block 6 uses none).
    frozen_gemm : bool
        Frozen, its large convolutions run as matrix products (:meth:`_gemm`).

    Example
    -------
    >>> block = ConvBlock(1, 8, "bn")
    >>> block(torch.randn(2, 1, 16, 20)).shape
    torch.Size([2, 8, 8, 10])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_type: str,
        pool: bool = True,
        frozen_gemm: bool = False,
    ):
        super().__init__()
        self.frozen_gemm = bool(frozen_gemm)
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = _make_norm(norm_type, out_channels)
        self.norm2 = _make_norm(norm_type, out_channels)
        self.pool = pool
        for conv in (self.conv1, self.conv2):
            torch.nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, F) -> (B, C_out, T // 2, F // 2), or (B, C_out, T, F) without pooling."""
        if self.frozen_input_gradient(x):
            return _FrozenConvBlock.apply(x, self)
        x = _conv_norm_relu(self.conv1, self.norm1, x, self._gemm(self.conv1, x))
        return self._pooled(_conv_norm_relu(self.conv2, self.norm2, x, self._gemm(self.conv2, x)))

    def _gemm(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
        """Run ``conv`` as unfold + matrix products (``frozen_gemm``, see
        :data:`FROZEN_GEMM_MIN_BYTES`): eval mode, nothing recorded (the no-grad forward, and
        the frozen block's, which records its own backward), fp32 on the CPU outside
        autocast, a large weight, at least as many output channels as output positions per
        clip."""
        weight = conv.weight
        return (
            self.frozen_gemm
            and not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and weight.numel() * weight.element_size() >= FROZEN_GEMM_MIN_BYTES
            and weight.shape[0] >= x.shape[-2] * x.shape[-1]
        )

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The block's 2x2 average pooling, if it has one."""
        return F.avg_pool2d(x, kernel_size=2) if self.pool else x

    def frozen_input_gradient(self, x: torch.Tensor) -> bool:
        """True when only the input's gradient can be asked of this block.

        That is: autograd records, the input needs a gradient, no parameter of the block
        does, both norms are batch norms in eval mode on their running statistics (an
        affine map per channel), and no forward hook watches the block's inner layers. The
        frozen classifier of L-MAC's masked passes, and of every gradient-based interpreter,
        is in that state; its backward is then :class:`_FrozenConvBlock`'s, which keeps two
        boolean ReLU masks instead of four fp32 maps and the input.
        """
        if not (torch.is_grad_enabled() and x.requires_grad) or self.training:
            return False
        if any(p.requires_grad for p in self.parameters()):
            return False
        inner = (self.conv1, self.norm1, self.conv2, self.norm2)
        if any(m._forward_hooks or m._forward_pre_hooks for m in inner) or _global_hooks():
            return False  # a hook on an inner layer (e.g. captum's) gets autograd's graph
        return all(
            isinstance(norm, torch.nn.BatchNorm2d) and norm.running_var is not None
            for norm in (self.norm1, self.norm2)
        )


def _conv_norm_relu(conv, norm, x: torch.Tensor, gemm: bool = False) -> torch.Tensor:
    """One layer of a block, as both of its paths run it. The in-place ReLU is safe: the norm
    layers' backward does not need their output."""
    return F.relu_(norm(_gemm_conv3x3(x, conv.weight) if gemm else conv(x)))


def _gemm_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A bias-free 3x3 / padding-1 / stride-1 convolution, clip by clip as ``weight (C_out,
    C_in 9) @ unfold(x) (C_in 9, H W)``: the weight is read in place (no reordered copy), and
    a clip's output does not depend on the batch. Not recorded by autograd."""
    B, _, H, W = x.shape
    w2 = weight.reshape(weight.shape[0], -1)
    cols = F.unfold(x, 3, padding=1)  # (B, C_in 9, H W)
    out = x.new_empty(B, weight.shape[0], H * W)
    for b in range(B):
        torch.mm(w2, cols[b], out=out[b])
    return out.view(B, weight.shape[0], H, W)


def _gemm_conv3x3_input_grad(grad: torch.Tensor, weight: torch.Tensor, input_shape):
    """The input gradient of :func:`_gemm_conv3x3`, clip by clip: ``fold(weight^T @ grad)``."""
    B, c_out, H, W = grad.shape
    w2 = weight.reshape(c_out, -1)
    cols = grad.new_empty(B, w2.shape[1], H * W)
    for b in range(B):
        torch.mm(w2.t(), grad[b].reshape(c_out, H * W), out=cols[b])
    return F.fold(cols, tuple(input_shape[-2:]), 3, padding=1)


def _global_hooks() -> bool:
    """Whether a global module forward hook is registered (they see every layer's output)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _bn_scale(norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    """(1, C, 1, 1) derivative of an eval-mode batch norm: weight / sqrt(running_var + eps)."""
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    return scale.view(1, -1, 1, 1)


class _FrozenConvBlock(torch.autograd.Function):
    """A :class:`ConvBlock` whose only gradient is its input's (frozen weights, eval mode).

    The forward is the block's own, run without recording (the same operators, so the same
    values). Autograd would keep, per block, the input, both convolution outputs and both ReLU
    outputs in fp32; none is needed for the input gradient of a frozen block, whose
    convolutions' input gradient needs only the weights, whose eval-mode batch norms are an
    affine map per channel, and whose ReLUs need only where their output is positive. So
    this keeps two boolean masks (a quarter of one fp32 map each) and the input's shape, and
    the backward is: average-pool backward (each output gradient spread over its 2 x 2 cell,
    divided by 4; the odd last row / column gets none), ReLU mask, batch-norm scale,
    ``convolution_backward`` for the input (the operator autograd calls), and again. At the
    paper size, L-MAC's masked-in and masked-out classifier pass then keeps 33 MiB for its
    backward instead of 277 MiB at batch 2, 0.26 GiB instead of 2.2 GiB at batch 16
    (docs/LMAC.md "Memory: the frozen classifier's backward"). The backward runs on as many
    clips at a time as :data:`FROZEN_BACKWARD_CHUNK_BYTES` allows, and with ``frozen_gemm``
    the large convolutions run as matrix products both ways. ``tests/test_cnn14.py`` checks
    the gradient against autograd's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: ConvBlock) -> torch.Tensor:
        with torch.no_grad():
            gemm1 = block._gemm(block.conv1, x)
            y1 = _conv_norm_relu(block.conv1, block.norm1, x, gemm1)
            mask1 = y1 > 0
            gemm2 = block._gemm(block.conv2, y1)
            y2 = _conv_norm_relu(block.conv2, block.norm2, y1, gemm2)
            del y1
            mask2 = y2 > 0
            out = block._pooled(y2)
        ctx.block = block
        ctx.shapes = (x.shape, mask2.shape)
        ctx.dtypes = (x.dtype, out.dtype)
        ctx.gemm = (gemm1, gemm2)
        ctx.save_for_backward(mask1, mask2)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mask1, mask2 = ctx.saved_tensors
        (x_shape, y_shape), (x_dtype, _) = ctx.shapes, ctx.dtypes
        B = x_shape[0]
        clip_bytes = max(1, mask2[0].numel() * grad.element_size())
        step = max(1, FROZEN_BACKWARD_CHUNK_BYTES // clip_bytes)
        if step >= B:
            return _FrozenConvBlock._input_grad(ctx, grad, mask1, mask2, x_shape, y_shape), None
        # a few clips at a time: the full-resolution temporaries of block 1 (two fp32 maps of
        # 33 MiB at the paper size, masked in and out at batch 2) exist for those clips only
        out = grad.new_empty(x_shape, dtype=x_dtype)
        for start in range(0, B, step):
            stop = min(B, start + step)
            part = (stop - start, *x_shape[1:]), (stop - start, *y_shape[1:])
            out[start:stop] = _FrozenConvBlock._input_grad(
                ctx, grad[start:stop], mask1[start:stop], mask2[start:stop], *part
            )
        return out, None

    @staticmethod
    def _input_grad(ctx, grad, mask1, mask2, x_shape, y_shape) -> torch.Tensor:
        block = ctx.block
        x_dtype, dtype = ctx.dtypes
        g = grad.to(dtype)
        if block.pool:  # avg_pool2d(2) backward: (B, C, T // 2, F // 2) -> (B, C, T, F)
            B, C, T, Fr = y_shape
            h, w = g.shape[-2:]
            g = (g * 0.25)[:, :, :, None, :, None].expand(B, C, h, 2, w, 2)
            g = g.reshape(B, C, 2 * h, 2 * w)
            if (2 * h, 2 * w) != (T, Fr):
                g = F.pad(g, (0, Fr - 2 * w, 0, T - 2 * h))
        else:
            g = g.clone()
        g = g.mul_(mask2).mul_(_bn_scale(block.norm2).to(dtype))
        gemm1, gemm2 = ctx.gemm
        g = _conv_input_grad(g, block.conv2, y_shape, dtype, gemm2)
        g = g.mul_(mask1).mul_(_bn_scale(block.norm1).to(dtype))
        g = _conv_input_grad(g, block.conv1, x_shape, dtype, gemm1)
        return g.to(x_dtype)


def _conv_input_grad(grad, conv: torch.nn.Conv2d, input_shape, dtype, gemm=False):
    """Input gradient of a bias-free 3x3 / padding-1 ``conv``: ``convolution_backward``, or
    :func:`_gemm_conv3x3_input_grad` for a convolution the forward ran that way."""
    if gemm and grad.dtype == conv.weight.dtype:
        return _gemm_conv3x3_input_grad(grad, conv.weight, input_shape)
    weight = conv.weight.to(dtype)
    dummy = grad.new_empty(1).expand(input_shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        grad,
        dummy,
        weight,
        None,
        conv.stride,
        conv.padding,
        conv.dilation,
        False,
        [0, 0],
        conv.groups,
        (True, False, False),
    )[0]


class Cnn14(Backbone):
    """CNN14 backbone on log1p mel spectrograms, state-dict compatible with SpeechBrain's.

    ``norm0`` normalises each mel bin, then come six :class:`ConvBlock` s (channels ``b, 2b, 4b,
    8b, 16b, emb_dim`` for ``b = base_channels``; the first five average-pool 2x2), each
    followed by dropout 0.2 in training; the embedding is max-over-time + mean-over-time of the
    frequency-averaged output of the last block.
    ``base_channels=64, emb_dim=2048`` is the published model (about 80M parameters).

    Intermediate maps (``return_maps=True``), exactly SpeechBrain's ``return_reps=True`` tuple
    ``(x1_out, x2_out, x3_out, x4_out)``, deepest first, for an input (B, T, 80)
    (all divisions are floor divisions)::

        maps[0]  block 6 output  (B, emb_dim, T // 32,  2)
        maps[1]  block 5 output  (B, 16 * b,  T // 32,  2)
        maps[2]  block 4 output  (B, 8 * b,   T // 16,  5)
        maps[3]  block 3 output  (B, 4 * b,   T // 8,  10)

    (for ``mel_bins`` M the frequency sizes are M // 32, M // 32, M // 16, M // 8).

    Arguments
    ---------
    mel_bins : int
        Number of mel bins of the input (at least 32: five 2x poolings).
    emb_dim : int
        Embedding dimension (channels of the last block).
    norm_type : str
        "bn", "in" or "ln", as in SpeechBrain.
    base_channels : int
        Channels of the first block; blocks 1-5 use ``base_channels * (1, 2, 4, 8, 16)``.
    sample_rate : int
        Sample rate (Hz) of the audio behind the spectrograms, for the mel filterbank.
    n_fft : int
        FFT size of the linear spectrograms given to :meth:`input_from_spectrogram`.
    frozen_gemm : bool
        Memory: frozen (eval mode, no gradient for the weights) convolutions with large
        weights (:data:`FROZEN_GEMM_MIN_BYTES`: blocks 5 and 6 at the paper size) run as unfold
        + matrix products, forward and input gradient, instead of oneDNN's kernels, which copy
        the weight into their own layout at every call (0.14 GiB at a time for block 6).
        The same function up to float rounding; L-MAC's YAML key ``classifier_frozen_gemm``.

    Example
    -------
    >>> model = Cnn14(mel_bins=80, emb_dim=32, base_channels=4).eval()
    >>> X = torch.rand(2, 87, 513)  # log1p magnitude of 1 s at 16 kHz
    >>> out = model(model.input_from_spectrogram(X), return_maps=True)
    >>> out.embedding.shape
    torch.Size([2, 32])
    >>> [tuple(m.shape) for m in out.maps]
    [(2, 32, 2, 2), (2, 64, 2, 2), (2, 32, 5, 5), (2, 16, 10, 10)]
    >>> model.saliency(out.maps).shape
    torch.Size([2, 2, 2])
    """

    def __init__(
        self,
        mel_bins: int = 80,
        emb_dim: int = 2048,
        norm_type: str = "bn",
        base_channels: int = 64,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        frozen_gemm: bool = False,
    ):
        super().__init__()
        if norm_type not in NORM_TYPES:
            raise ValueError(f"Unknown norm_type {norm_type!r}: use one of {NORM_TYPES}")
        if mel_bins < 2**N_POOLINGS:
            raise ValueError(
                f"Cnn14 needs mel_bins >= {2**N_POOLINGS} (five 2x poolings), got "
                f"mel_bins={mel_bins}: use more mel bins (the published model uses 80)"
            )
        if base_channels < 1 or emb_dim < 1:
            raise ValueError(
                f"base_channels and emb_dim must be positive, got {base_channels}, {emb_dim}"
            )
        self.mel_bins = mel_bins
        self.embedding_dim = emb_dim
        self.n_bins = n_fft // 2 + 1

        self.norm0 = _make_norm(norm_type, mel_bins)
        b = base_channels
        gemm = {"frozen_gemm": frozen_gemm}
        self.conv_block1 = ConvBlock(1, b, norm_type, **gemm)
        self.conv_block2 = ConvBlock(b, 2 * b, norm_type, **gemm)
        self.conv_block3 = ConvBlock(2 * b, 4 * b, norm_type, **gemm)
        self.conv_block4 = ConvBlock(4 * b, 8 * b, norm_type, **gemm)
        self.conv_block5 = ConvBlock(8 * b, 16 * b, norm_type, **gemm)
        self.conv_block6 = ConvBlock(16 * b, emb_dim, norm_type, pool=False, **gemm)

        # The filterbank is fixed (no parameters, nothing in the state dict): compute its
        # (n_fft // 2 + 1, mel_bins) matrix once by feeding it the identity, instead of letting
        # it rebuild the matrix on the CPU and copy it to the device at every call.
        fbank = Filterbank(n_mels=mel_bins, n_fft=n_fft, sample_rate=sample_rate, log_mel=False)
        with torch.no_grad():
            fbank_matrix = fbank(torch.eye(self.n_bins))  # (bins, mel_bins)
        self.register_buffer("fbank_matrix", fbank_matrix, persistent=False)

    def input_from_spectrogram(self, X: torch.Tensor) -> torch.Tensor:
        """log1p mel input from a log1p magnitude spectrogram: ``log1p(fbank(expm1(X)))``.

        Arguments
        ---------
        X : torch.Tensor
            (B, frames, n_fft // 2 + 1) log1p linear magnitude, masked or not.

        Returns
        -------
        torch.Tensor
            (B, frames, mel_bins) log1p mel spectrogram.
        """
        if X.dim() != 3 or X.shape[-1] != self.n_bins:
            raise ValueError(
                f"Cnn14.input_from_spectrogram expects (batch, frames, {self.n_bins}) log1p "
                f"magnitudes, got shape {tuple(X.shape)}: pass the front-end's X and build "
                f"Cnn14 with the front-end's n_fft"
            )
        return torch.log1p(torch.matmul(torch.expm1(X), self.fbank_matrix))

    def forward(self, x: torch.Tensor, return_maps: bool = False) -> BackboneOutput:
        """Embed a batch of log1p mel spectrograms.

        Arguments
        ---------
        x : torch.Tensor
            (B, frames, mel_bins) log1p mel spectrogram, frames >= 32.
        return_maps : bool
            Also return the outputs of blocks 6, 5, 4, 3 (see the class docstring).

        Returns
        -------
        BackboneOutput
            embedding (B, emb_dim) and maps (``()`` unless ``return_maps``).
        """
        if x.dim() != 3 or x.shape[-1] != self.mel_bins:
            raise ValueError(
                f"Cnn14 expects (batch, frames, mel_bins={self.mel_bins}) log1p mel input, got "
                f"shape {tuple(x.shape)}: compute the input with input_from_spectrogram or build "
                f"Cnn14 with mel_bins={x.shape[-1]}"
            )
        if x.shape[1] < 2**N_POOLINGS:
            raise ValueError(
                f"Cnn14 needs at least {2**N_POOLINGS} frames (five 2x poolings), got "
                f"{x.shape[1]}: use clips of at least ~0.4 s at hop 186 / 16 kHz"
            )
        drop = {"p": 0.2, "training": self.training}  # identity in eval mode
        x = self.norm0(x.unsqueeze(1).transpose(1, 3))  # (B, mel_bins, T, 1)
        x = x.transpose(1, 3)  # (B, 1, T, mel_bins)

        x = F.dropout(self.conv_block1(x), **drop)  # (B, b, T/2, M/2)
        x = F.dropout(self.conv_block2(x), **drop)  # (B, 2b, T/4, M/4)
        block3 = self.conv_block3(x)  # (B, 4b, T/8, M/8)
        block4 = self.conv_block4(F.dropout(block3, **drop))  # (B, 8b, T/16, M/16)
        block5 = self.conv_block5(F.dropout(block4, **drop))  # (B, 16b, T/32, M/32)
        block6 = self.conv_block6(F.dropout(block5, **drop))  # (B, emb_dim, T/32, M/32)

        x = F.dropout(block6, **drop).mean(dim=3)  # (B, emb_dim, T/32)
        embedding = x.amax(dim=2) + x.mean(dim=2)  # (B, emb_dim)
        maps = (block6, block5, block4, block3) if return_maps else ()
        return BackboneOutput(embedding=embedding, maps=maps)

    def saliency(self, maps: tuple, **options) -> torch.Tensor:
        """Channel-wise L2 norm of the deepest map (block 6): (B, T // 32, mel_bins // 32).

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
            raise ValueError(
                f"Cnn14.saliency takes no options, got {sorted(options)}: remove them from "
                f"the saliency options in the YAML"
            )
        if len(maps) == 0:
            raise ValueError("Cnn14.saliency got no maps: call the model with return_maps=True")
        return torch.linalg.vector_norm(maps[0], dim=1)  # (B, T/32, M/32)
