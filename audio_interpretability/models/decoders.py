"""The L-MAC decoder: CNN14 block outputs -> mask logits on the linear spectrogram.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

N_BINS = 513  # linear-frequency bins the decoder outputs (n_fft = 1024)
MAP_FREQS = (2, 2, 5, 10)  # frequency sizes of the Cnn14 maps for 80 mel bins, deepest first
MAX_FRAME_DIFF = 8  # align_frames refuses larger frame differences (wrong input, not rounding)
# GemmConvTranspose2d computes a layer with at least ROWS_RATIO input channels per input
# position (C_in >= ROWS_RATIO * H * W: convt1 .. convt3 of the paper-size decoder) as one
# matrix product over every input position, else sample by sample with no layout copy. 8 sits
# between convt4 (C_in / (H W) = 3.9: per sample 0.178 s against 0.218 s, forward + backward at
# batch 2) and convt3 (16: one product 0.88 s against 1.04 s), on a 2-core Xeon with AVX-512
ROWS_RATIO = 8
# col2im (fold) runs on one core in torch 2.11: _col2im splits a sample's output channels over
# torch.get_num_threads() threads when its columns hold at least COL2IM_SPLIT_MIN values
# (convt8's fold at batch 2: 58 ms on one core, 29 ms on two)
COL2IM_SPLIT_MIN = 1 << 20
# _PerSampleConvTranspose makes a sample's columns (C_out kh kw, H W) for groups of output
# channels of at most this size: convt7's columns at the paper size, 81 MiB in one piece, are
# 2 pieces of 41 MiB (its backward was the batch-2 training peak; 3 % slower there), convt5's
# 59 MiB stay whole (16 MiB pieces: 20 % slower, the products' output then strided)
COLS_CHUNK_BYTES = 64 << 20
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0


def _fit_frames(x: torch.Tensor, n_frames: int, dim: int) -> torch.Tensor:
    """Crop the end of ``x`` along ``dim`` to ``n_frames``, or pad it by repeating the last frame."""
    current = x.shape[dim]
    if current >= n_frames:
        return x.narrow(dim, 0, n_frames)
    shape = list(x.shape)
    shape[dim] = n_frames - current
    last = x.narrow(dim, current - 1, 1).expand(shape)
    return torch.cat((x, last), dim=dim)


class GemmConvTranspose2d(torch.nn.ConvTranspose2d):
    """``ConvTranspose2d`` that, on the CPU in fp32, runs as matrix products and ``fold``
    (col2im) instead of oneDNN's transposed convolution: the same function up to float
    rounding, the same parameters and state dict.

    Two reasons. Speed: the paper-size decoder's forward + backward at batch 2 is 1.6x faster
    than with oneDNN (``benchmarks/bench_decoder_layers.py``, 2 threads on a 2-core Xeon:
    4.61 s against 7.44 s, every layer faster, ``convt4`` only just; at batch 16, measured
    before the fold was split over threads, 1.43x, ``convt4`` 0.94x). Correctness: oneDNN's
    multi-threaded transposed convolution in torch 2.11 sometimes returns wrong values for
    ``convt5``'s shape at batch 8 and more (2048 -> 1024 channels, kernel (3, 5), stride 2,
    on a 53 x 18 grid: thousands of outputs off by up to 0.8, in 1 to 6 calls of 12 on a
    2-core Xeon with AVX-512; 1 thread is right). ``benchmarks/check_conv_transpose.py``
    checks a machine.

    A layer with many input channels per input position (``C_in >= ROWS_RATIO * H * W``) is
    one product over every position of the batch, ``(B H W, C_in) @ (C_in, C_out kh kw)``, then
    ``fold``; the others go sample by sample (:class:`_PerSampleConvTranspose`: the product
    written where ``fold`` reads it, no layout copy, and a batch's columns are never all in
    memory at once). Other devices, other dtypes, autocast (``--precision bf16``), dilation,
    groups, output padding and ``output_size`` go through ``ConvTranspose2d`` unchanged. On
    any device, input rows / columns whose every output falls in the cropped padding are
    skipped first (:func:`skip_cropped_inputs`: 11 % of ``convt7``'s work).

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> layer = GemmConvTranspose2d(64, 32, (7, 4), (2, 4), 1)
    >>> x = torch.randn(2, 64, 5, 3)
    >>> y = layer(x)
    >>> y.shape, bool(torch.allclose(y, torch.nn.ConvTranspose2d.forward(layer, x), atol=1e-5))
    (torch.Size([2, 32, 13, 10]), True)
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (
            output_size is not None
            or self.groups != 1
            or self.dilation != (1, 1)
            or self.output_padding != (0, 0)
            or self.padding_mode != "zeros"
        ):
            return super().forward(x, output_size)
        return gemm_conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)


def gemm_conv_transpose2d(x, weight, bias, stride, padding) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride, padding)`` (no groups, dilation or output
    padding) as :class:`GemmConvTranspose2d` computes it: the inputs whose outputs are all
    cropped skipped, then, on the CPU in fp32 outside autocast, matrix products and ``fold``;
    elsewhere ``F.conv_transpose2d``. ``weight`` may be computed (not a parameter)."""
    x, padding = skip_cropped_inputs(x, weight.shape[2:], stride, padding)
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")  # bf16: oneDNN's kernels (fold is slow in bf16)
    ):
        return F.conv_transpose2d(x, weight, bias, stride, padding)
    B, C, H, W = x.shape
    if C < ROWS_RATIO * H * W:
        return _PerSampleConvTranspose.apply(x, weight, bias, stride, padding)
    c_out, kh, kw = weight.shape[1:]
    (sh, sw), (ph, pw) = stride, padding
    h_out, w_out = (H - 1) * sh - 2 * ph + kh, (W - 1) * sw - 2 * pw + kw
    rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # (B H W, C_in)
    stepper = getattr(weight, "row_stepper", None)  # optimizer_in_backward's, large weights
    if stepper is not None and weight.requires_grad and torch.is_grad_enabled():
        cols = _RowSteppedProduct.apply(rows, weight, stepper)
    else:
        cols = rows @ weight.reshape(C, c_out * kh * kw)  # (B H W, C_out kh kw)
    cols = cols.reshape(B, H * W, c_out * kh * kw).transpose(1, 2)  # (B, C_out kh kw, H W)
    out = F.fold(cols, (h_out + 2 * ph, w_out + 2 * pw), (kh, kw), stride=(sh, sw))
    out = out[:, :, ph : ph + h_out, pw : pw + w_out]  # (B, C_out, h_out, w_out)
    if bias is not None:
        out = out + bias.to(out.dtype)[None, :, None, None]
    return out


class _RowSteppedProduct(torch.autograd.Function):
    """``rows @ weight.reshape(C_in, -1)`` whose weight gradient, inside an
    ``optimizer_in_backward`` step, never exists whole.

    Backward: the input gradient first (with the weight before its step), then, when the
    weight's :class:`~audio_interpretability.brains.optimizer_in_backward.RowStepper` is active,
    the weight gradient chunk of input channels by chunk (``rows[:, i:j]^T @ grad``), each
    chunk stepped at once and dropped; no gradient is returned for the weight. Outside the
    optimizer's stepping, the whole weight gradient is returned as autograd's would be.
    """

    @staticmethod
    def forward(ctx, rows, weight, stepper):
        ctx.save_for_backward(rows, weight)
        ctx.stepper = stepper
        return rows @ weight.reshape(weight.shape[0], -1)

    @staticmethod
    def backward(ctx, grad_cols):
        rows, weight = ctx.saved_tensors
        w2 = weight.reshape(weight.shape[0], -1)
        grad_rows = grad_cols @ w2.t() if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[1]:
            return grad_rows, None, None
        stepper = ctx.stepper
        if not stepper.active:
            return grad_rows, (rows.t() @ grad_cols).view_as(weight), None
        for start, stop in stepper.chunks(weight.shape[0]):
            grad = (rows[:, start:stop].t() @ grad_cols).view_as(weight[start:stop])
            stepper.step_rows(start, stop, grad)
            del grad
        stepper.finish()
        return grad_rows, None, None


class _PerSampleConvTranspose(torch.autograd.Function):
    """Transposed convolution (no dilation, groups or output padding) sample by sample.

    Forward, per sample: ``cols = W^T x`` with ``W`` as (C_in, C_out kh kw) and ``x`` as
    (C_in, H W), i.e. (C_out kh kw, H W), the layout ``fold`` reads, then ``fold`` with the
    padding (what lands on the cropped border is dropped) straight into the contiguous
    output, and the bias added there in place. Backward, per sample: ``unfold`` of the output
    gradient with the padding (the adjoint of fold + crop) gives the columns' gradient ``G``;
    then ``grad x = W G`` and ``grad W += x G^T``. No tensor is transposed or padded in memory,
    and the columns are made for groups of output channels (:data:`COLS_CHUNK_BYTES`), so a
    layer's temporaries stay small whatever its size.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        # x as given is saved (a cropped input is a view of a tensor the previous layer's
        # ReLU keeps anyway): it is copied contiguous one sample at a time, when used
        ctx.save_for_backward(x, weight)
        B, C, H, W = x.shape
        c_out, kh, kw = weight.shape[1:]
        (sh, sw), (ph, pw) = stride, padding
        h_out, w_out = (H - 1) * sh - 2 * ph + kh, (W - 1) * sw - 2 * pw + kw
        k = kh * kw
        w2 = weight.reshape(C, c_out * k)
        out = x.new_empty(B, c_out, h_out, w_out)
        groups = _channel_groups(c_out, k * H * W * x.element_size())
        cols = x.new_empty(groups[0][1] * k, H * W)  # one buffer for every sample and group
        for b in range(B):
            xb = x[b].reshape(C, H * W)
            for lo, hi in groups:  # output channels lo:hi
                part = cols[: (hi - lo) * k]
                torch.mm(w2[:, lo * k : hi * k].t(), xb, out=part)
                # col2im with the padding: the cropped output, written contiguous
                _col2im(part, out[b, lo:hi], (kh, kw), (ph, pw), (sh, sw))
            if bias is not None:
                out[b].add_(bias[:, None, None])
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        (sh, sw), (ph, pw) = ctx.stride, ctx.padding
        B, C, H, W = x.shape
        c_out, kh, kw = weight.shape[1:]
        k = kh * kw
        w2 = weight.reshape(C, c_out * k)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = x.new_empty(B, C, H * W) if need_x else None
        grad_w = x.new_zeros(C, c_out * k) if need_w else None
        if need_x or need_w:
            groups = _channel_groups(c_out, k * H * W * x.element_size())
            cols = x.new_empty(groups[0][1] * k, H * W)  # one buffer for everything
            for b in range(B):
                xb = x[b].reshape(C, H * W) if need_w else None  # a cropped input: a copy
                for lo, hi in groups:  # cols = unfold(grad_out[b, lo:hi] padded by padding)
                    part, rows = cols[: (hi - lo) * k], slice(lo * k, hi * k)
                    torch.ops.aten.im2col.out(
                        grad_out[b, lo:hi], (kh, kw), (1, 1), (ph, pw), (sh, sw), out=part
                    )
                    if need_x and lo == 0:
                        torch.mm(w2[:, rows], part, out=grad_x[b])
                    elif need_x:
                        grad_x[b].addmm_(w2[:, rows], part)
                    if need_w:
                        grad_w[:, rows].addmm_(xb, part.t())
        grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and need_b else None
        return (
            grad_x.view(B, C, H, W) if need_x else None,
            grad_w.view_as(weight) if need_w else None,
            grad_b,
            None,
            None,
        )


def _channel_groups(channels: int, bytes_per_channel: int) -> list:
    """``(lo, hi)`` ranges of output channels whose columns take at most
    :data:`COLS_CHUNK_BYTES` (at least one channel each), covering ``range(channels)``."""
    size = max(1, min(channels, COLS_CHUNK_BYTES // max(1, bytes_per_channel)))
    return [(lo, min(lo + size, channels)) for lo in range(0, channels, size)]


def _col2im_pool(workers: int) -> ThreadPoolExecutor:
    """The threads :func:`_col2im` hands channel groups to (a new pool in a forked process,
    whose parent's threads it does not have)."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid() or _POOL._max_workers < workers:
        if _POOL is not None:  # too small (more torch threads now) or the parent's: let it go
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="col2im")
        _POOL_PID = os.getpid()
    return _POOL


def _col2im(cols: torch.Tensor, out: torch.Tensor, kernel, padding, stride) -> None:
    """``out[:] = col2im(cols)`` for one sample: ``cols`` (C kh kw, H W), ``out`` (C, h, w),
    both contiguous. torch's col2im is a loop on one core; with several torch threads and
    enough work, the channels are split into groups, each folded by its own thread (torch's
    operators release the GIL), the same values as one call."""
    c_out = out.shape[0]
    parts = min(torch.get_num_threads(), c_out)
    args = (out.shape[1:], kernel, (1, 1), padding, stride)
    if parts < 2 or cols.numel() < COL2IM_SPLIT_MIN:
        torch.ops.aten.col2im.out(cols, *args, out=out)
        return
    inference = torch.is_inference_mode_enabled()  # thread-local: the workers get it passed
    k = cols.shape[0] // c_out  # rows of cols per channel (kh kw)

    def fold(lo: int, hi: int) -> None:
        with torch.inference_mode(inference):
            torch.ops.aten.col2im.out(cols[lo * k : hi * k], *args, out=out[lo:hi])

    bounds = [c_out * i // parts for i in range(parts + 1)]
    pool = _col2im_pool(parts - 1)
    futures = [pool.submit(fold, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    fold(bounds[0], bounds[1])
    for future in futures:
        future.result()


def skip_cropped_inputs(x: torch.Tensor, kernel, stride, padding) -> tuple[torch.Tensor, tuple]:
    """Drop the input rows / columns of a transposed convolution whose every output lands in
    the cropped ``padding``, and reduce the padding to match: the same output, fewer FLOPs.

    Input position ``j`` writes padded outputs ``j s .. j s + k - 1``; the first ``p`` and the
    last ``p`` are cropped. L-MAC's ``convt7`` (kernel 3, stride 2, padding 5 along frequency)
    spends 4 of its 37 input columns (11 % of its work) on outputs it then crops. The same
    number is dropped at both ends (the padding stays symmetric), so the output is unchanged,
    up to float rounding; the gradient of a dropped input is zero, as it is without the skip.

    Example
    -------
    >>> x = torch.randn(1, 4, 3, 37)
    >>> w = torch.randn(4, 2, 4, 3)
    >>> y, padding = skip_cropped_inputs(x, (4, 3), (2, 2), (0, 5))
    >>> y.shape, padding
    (torch.Size([1, 4, 3, 33]), (0, 1))
    >>> full = F.conv_transpose2d(x, w, stride=(2, 2), padding=(0, 5))
    >>> bool(torch.allclose(F.conv_transpose2d(y, w, stride=(2, 2), padding=padding), full, atol=1e-5))
    True
    """
    new_padding = []
    for dim, (k, s, p) in enumerate(zip(kernel, stride, padding)):
        size = x.shape[2 + dim]
        lead = max(0, -(-(p - k + 1) // s))  # inputs j with j s + k - 1 < p
        trail = size - min(size, -(-((size - 1) * s + k - p) // s))  # inputs j with j s >= L - p
        skip = min(lead, trail, (size - 1) // 2)
        if skip > 0:
            x = x.narrow(2 + dim, skip, size - 2 * skip)
        new_padding.append(p - skip * s)
    return x, tuple(new_padding)


def linear_tail(first, second, x: torch.Tensor, gemm: bool = True) -> torch.Tensor:
    """``second(first(x))`` for two transposed convolutions with nothing between them (L-MAC's
    ``convt8`` then ``convt9``), computed as one transposed convolution: the same function up
    to float rounding, with the same parameters and their gradients (autograd goes through
    the combined kernel), and far fewer FLOPs when ``second`` has fewer output channels.

    The published decoder's ``convt8`` (C -> C / 2 channels, kernel (3, 4), stride (2, 2),
    padding (0, 2)) and ``convt9`` (C / 2 -> 1, kernel (1, 5), stride (1, 4)) have no
    nonlinearity between them; both together are one transposed convolution C -> 1 with
    kernel (3, 17), stride (2, 8) and padding (0, 8). At the paper size (C = 512) that is
    120 times fewer multiply-adds than ``convt8`` alone (the decoder's forward pass goes from
    192.7 to 149.9 GFLOP per 5 s clip, the training step from 654 to 525), and the
    (B, 256, frames, 128) output of ``convt8`` is never stored.

    Three parts, all exact:

    * the combined kernel ``K[c, o, i, 4 a + b] = sum_k W8[c, k, i, a] W9[k, o, 0, b]`` applied
      to ``x`` (the width of ``first``'s output before its cropping, times ``second``'s stride,
      is cropped at each end);
    * ``first`` crops ``p`` columns at each end of its output, which ``second`` never sees, but
      the combined kernel does: their contribution to the first and last output columns
      (those within ``second``'s kernel - stride of the ends) is computed from the input
      columns that make them, through the taps that make them, and subtracted;
    * ``first``'s bias goes through ``second`` as a constant field (one row, the same for
      every frame), added with ``second``'s bias.

    Arguments
    ---------
    first : torch.nn.ConvTranspose2d
        Padding ``(0, p)``; no groups, dilation or output padding.
    second : torch.nn.ConvTranspose2d
        Kernel ``(1, k)``, stride ``(1, s)``, no padding, groups, dilation or output padding.
    x : torch.Tensor
        (B, C_in, H, W) input of ``first``.
    gemm : bool
        The combined convolution as :func:`gemm_conv_transpose2d` (matrix products on the CPU
        in fp32), else ``F.conv_transpose2d``.

    Returns
    -------
    torch.Tensor
        ``second(first(x))``.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> first = torch.nn.ConvTranspose2d(16, 8, (3, 4), (2, 2), (0, 2))
    >>> second = torch.nn.ConvTranspose2d(8, 1, (1, 5), (1, 4), 0)
    >>> x = torch.randn(2, 16, 6, 9)
    >>> y = linear_tail(first, second, x)
    >>> y.shape, bool(torch.allclose(y, second(first(x)), atol=1e-5))
    (torch.Size([2, 1, 13, 65]), True)
    """
    plain = all(
        layer.groups == 1 and layer.dilation == (1, 1) and layer.output_padding == (0, 0)
        for layer in (first, second)
    )
    if not (
        plain
        and first.padding[0] == 0
        and second.kernel_size[0] == 1
        and second.stride[0] == 1
        and second.padding == (0, 0)
    ):
        raise ValueError(
            "linear_tail merges a transposed convolution with padding (0, p) and one with "
            f"kernel (1, k), stride (1, s) and no padding (no groups, dilation or output "
            f"padding); got {first} and {second}: run them one after the other instead"
        )
    w1, w2 = first.weight, second.weight  # (C_in, C_mid, kh, k1), (C_mid, C_out, 1, k2)
    (s1h, s1), s2 = first.stride, second.stride[1]
    p1 = first.padding[1]
    stride, padding = (s1h, s1 * s2), (0, s2 * p1)
    kernel = _combined_kernel(w1, w2, s2, w1.shape[3])
    if gemm:
        y = gemm_conv_transpose2d(x, kernel, None, stride, padding)
    else:
        y = F.conv_transpose2d(x, kernel, None, stride, padding)
    if p1 > 0:  # first's cropped columns, which the combined kernel saw: subtract them
        left = _cropped_contribution(x, w1, w2, s1h, s1, s2, p1)
        # the right end is the left end of the mirrored problem (columns and taps reversed);
        # x's columns are read mirrored in place, not from a flipped copy that its backward
        # would keep (54 MiB at the paper size, batch 2)
        right = _cropped_contribution(x, w1.flip(3), w2.flip(3), s1h, s1, s2, p1, mirrored=True)
        if left is not None:
            y[..., : left.shape[3]] -= left
            y[..., y.shape[3] - right.shape[3] :] -= right.flip(3)
    if first.bias is not None:
        mid_width = (x.shape[3] - 1) * s1 - 2 * p1 + w1.shape[3]
        field = first.bias.view(1, -1, 1, 1).expand(1, -1, 1, mid_width)
        y = y + F.conv_transpose2d(field.to(w2.dtype), w2, second.bias, (1, s2))
    elif second.bias is not None:
        y = y + second.bias.view(1, -1, 1, 1).to(y.dtype)
    return y


def _combined_kernel(w1: torch.Tensor, w2: torch.Tensor, s2: int, taps: int) -> torch.Tensor:
    """(C_in, C_out, kh, s2 (taps - 1) + k2) kernel of ``w1``'s first ``taps`` column taps
    followed by ``w2`` (kernel (1, k2), stride s2): tap a of w1 then tap b of w2 is tap
    s2 a + b."""
    k2 = w2.shape[3]
    width = s2 * (taps - 1) + k2
    kernel = None
    for a in range(taps):
        part = torch.einsum("cki,kob->coib", w1[..., a], w2[:, :, 0, :])
        part = F.pad(part, (s2 * a, width - s2 * a - k2))
        kernel = part if kernel is None else kernel + part
    return kernel


def _cropped_contribution(x, w1, w2, s1h: int, s1: int, s2: int, p1: int, mirrored=False):
    """What the combined kernel adds to the first ``k2 - s2`` output columns through the
    ``p1`` leftmost columns of ``first``'s output, which ``first`` crops (``None`` if nothing
    reaches the output: ``k2 <= s2``). Input column j reaches them through its taps
    a < p1 - s1 j; through tap a and ``second``'s tap b it lands on output column
    s2 (s1 j + a - p1) + b, so each input column's part is ``k2 - s2`` columns wide.
    ``mirrored``: ``x``'s columns counted from the right end (``x.flip(3)``, without a copy)."""
    if w2.shape[3] <= s2:
        return None
    out = None
    width = x.shape[3]
    for j in range(-(-p1 // s1)):  # input columns that make a cropped column
        kernel = _combined_kernel(w1, w2, s2, p1 - s1 * j)
        first_kept = s2 * (p1 - s1 * j)  # the kernel's first column that lands in the output
        column = x[..., width - 1 - j : width - j] if mirrored else x[..., j : j + 1]
        part = F.conv_transpose2d(column, kernel[..., first_kept:], None, (s1h, 1))
        out = part if out is None else out + part
    return out


class CNN14Decoder(torch.nn.Module):
    """Transposed-conv decoder of L-MAC (SpeechBrain's ``CNN14PSI_stft``) with a free width.

    It reads the maps of :class:`~audio_interpretability.models.cnn14.Cnn14` (deepest first,
    channels ``in_dim, in_dim // 2, in_dim // 4, in_dim // 8``, i.e. a Cnn14 with
    ``emb_dim = in_dim = 32 * base_channels``, 80 mel bins) and outputs mask logits on the
    513-bin linear spectrogram. Layers ``convt1`` .. ``convt9`` have the published kernels,
    strides, paddings and ReLU placement (no nonlinearity after ``convt8`` and ``convt9``);
    the hidden channels are ``width, width // 2, width // 4, width // 8``. With
    ``width=None`` (= ``in_dim``) the decoder is exactly ``CNN14PSI_stft(dim=in_dim,
    outdim=out_dim)`` and loads its checkpoints strictly; a small width gives a small decoder.

    **Frames.** The published decoder only works when the skip branches line up, i.e. for
    ``T % 32`` in 8..15 input frames (true for 5 s clips, 431 frames). Here, at each skip
    addition the upsampled deeper branch is cropped at the end, or padded by repeating its
    last frame, to the skip branch's frame count (a no-op when they line up, so the published
    results are unchanged). The output then has ``8 * (T // 8) + 1`` frames for ``T`` input
    frames, i.e. between 1 more and 6 fewer than the spectrogram:

    ======  ============  ======================  ===================================
    clip    STFT frames   decoder frames          published ``CNN14PSI_stft``
    ======  ============  ======================  ===================================
    1 s     87            81 (pad 6)              fails (skip branches 9 vs 11 frames)
    2 s     173           169 (pad 4)             169
    5 s     431           425 (pad 6)             425
    ======  ============  ======================  ===================================

    (16 kHz, hop 186 samples, n_fft 1024, 80 mel bins.) :meth:`align_frames` then brings the
    logits to the spectrogram's frame count: extra frames are cropped at the end, missing ones
    are padded at the end by repeating the last frame (edge padding). The published recipe
    instead crops the input spectrogram to the decoder's frames, losing the end of the clip; we
    keep the full clip.

    Arguments
    ---------
    in_dim : int
        Channels of the deepest Cnn14 map (its ``emb_dim``); the other maps must have
        ``in_dim // 2``, ``in_dim // 4``, ``in_dim // 8`` channels.
    width : int, optional
        Hidden channels of the first transposed convolutions (divisible by 8); ``None`` means
        ``in_dim``, the published decoder.
    out_dim : int
        Output channels (1 for one mask).
    map_channels : sequence of 4 ints, optional
        Channels of the four Cnn14 maps (deepest first) when they are not ``in_dim, in_dim //
        2, in_dim // 4, in_dim // 8``, e.g. ``(emb_dim, 16 b, 8 b, 4 b)`` for a Cnn14 with
        ``base_channels=b`` and ``emb_dim != 32 b``. ``in_dim`` is then ignored.
    gemm_conv : bool
        On the CPU in fp32, run the layers as matrix products + fold
        (:class:`GemmConvTranspose2d`: same function and parameters, faster, and clear of a
        oneDNN bug at batch 8 and more); False: plain ``ConvTranspose2d`` everywhere.
    fuse_tail : bool
        Compute ``convt9(convt8(h))``, two linear layers with nothing between them, as one
        transposed convolution (:func:`linear_tail`: the same function and parameters, 20 %
        fewer FLOPs in the paper-size training step); False: one layer after the other, as
        published.

    Example
    -------
    >>> from audio_interpretability.models.cnn14 import Cnn14
    >>> cnn14 = Cnn14(emb_dim=64, base_channels=2).eval()
    >>> decoder = CNN14Decoder(in_dim=64, width=16)
    >>> maps = cnn14(torch.randn(2, 87, 80), return_maps=True).maps
    >>> logits = decoder(maps)
    >>> logits.shape
    torch.Size([2, 1, 81, 513])
    >>> decoder.align_frames(logits[:, 0], n_frames=87).shape
    torch.Size([2, 87, 513])
    """

    def __init__(
        self,
        in_dim: int = 2048,
        width: int | None = None,
        out_dim: int = 1,
        map_channels: tuple | None = None,
        gemm_conv: bool = True,
        fuse_tail: bool = True,
    ):
        super().__init__()
        if map_channels is not None:
            if len(map_channels) != 4 or any(int(c) < 1 for c in map_channels):
                raise ValueError(
                    f"map_channels must be 4 positive channel counts (deepest Cnn14 map first), "
                    f"got {map_channels}"
                )
            in_dim = int(map_channels[0])
        width = in_dim if width is None else width
        if in_dim < 8 or in_dim % 8 or width < 8 or width % 8 or out_dim < 1:
            raise ValueError(
                f"CNN14Decoder needs in_dim and width divisible by 8 (>= 8) and out_dim >= 1, "
                f"got in_dim={in_dim}, width={width}, out_dim={out_dim}: set in_dim to the "
                f"Cnn14 emb_dim (32 * base_channels) and width to a multiple of 8"
            )
        self.in_dim = in_dim
        self.width = width
        self.out_dim = out_dim
        if map_channels is None:
            map_channels = (in_dim, in_dim // 2, in_dim // 4, in_dim // 8)
        self.map_channels = tuple(int(c) for c in map_channels)
        c1, c2, c3, c4 = self.map_channels
        w = width
        ConvT = GemmConvTranspose2d if gemm_conv else torch.nn.ConvTranspose2d
        self.convt1 = ConvT(c1, w, 3, (2, 4), 1)
        self.convt2 = ConvT(c2, w, 3, (2, 4), 1)
        self.convt3 = ConvT(w, w, (7, 4), (2, 4), 1)
        self.convt4 = ConvT(c3, w, (5, 4), (2, 4), 1)
        self.convt5 = ConvT(w, w // 2, (3, 5), (2, 2), 1)
        self.convt6 = ConvT(c4, w // 2, (3, 3), (2, 4), 1)
        self.convt7 = ConvT(w // 2, w // 4, (4, 3), (2, 2), (0, 5))
        self.convt8 = ConvT(w // 4, w // 8, (3, 4), (2, 2), (0, 2))
        self.convt9 = ConvT(w // 8, out_dim, (1, 5), (1, 4), 0)
        self.nonl = torch.nn.ReLU(inplace=True)
        self.gemm_conv = bool(gemm_conv)
        self.fuse_tail = bool(fuse_tail)

    def _check_maps(self, maps: tuple) -> None:
        """Raise a ValueError naming the fix when ``maps`` is not a Cnn14 maps tuple we accept."""
        if len(maps) != 4 or any(m.dim() != 4 for m in maps):
            raise ValueError(
                "CNN14Decoder expects the 4 maps of Cnn14(..., return_maps=True), each "
                f"(B, C, frames, freq); got {[tuple(m.shape) for m in maps]}"
            )
        channels = tuple(m.shape[1] for m in maps)
        if channels != self.map_channels:
            raise ValueError(
                f"CNN14Decoder expects map channels {self.map_channels}, got {channels}: pass "
                f'--decoder_map_channels "{list(channels)}" (emb_dim, 16, 8 and 4 x '
                "base_channels), or use emb_dim = 32 * base_channels as published"
            )
        freqs = tuple(m.shape[3] for m in maps)
        if freqs != MAP_FREQS:
            raise ValueError(
                f"CNN14Decoder expects map frequency sizes {MAP_FREQS} (Cnn14 with 80 mel "
                f"bins), got {freqs}: build the Cnn14 with mel_bins=80"
            )

    def forward(self, maps: tuple) -> torch.Tensor:
        """Mask logits from the Cnn14 maps.

        Arguments
        ---------
        maps : tuple of torch.Tensor
            ``Cnn14(x, return_maps=True).maps`` for x of shape (B, T, 80): (B, in_dim, T/32, 2),
            (B, in_dim/2, T/32, 2), (B, in_dim/4, T/16, 5), (B, in_dim/8, T/8, 10).

        Returns
        -------
        torch.Tensor
            (B, out_dim, 8 * (T // 8) + 1, 513) mask logits (before the sigmoid).
        """
        self._check_maps(maps)
        h = self.nonl(self.convt1(maps[0])) + self.nonl(self.convt2(maps[1]))  # (B, w, 2T/32-1, 5)
        h3 = self.nonl(self.convt3(h))  # (B, w, 4T/32+1, 18)
        h4 = self.nonl(self.convt4(maps[2]))  # (B, w, 2T/16+1, 18)
        h = _fit_frames(h3, h4.shape[2], dim=2) + h4
        h5 = self.nonl(self.convt5(h))  # (B, w/2, 4T/16+1, 37)
        h6 = self.nonl(self.convt6(maps[3]))  # (B, w/2, 2T/8-1, 37)
        h = _fit_frames(h5, h6.shape[2], dim=2) + h6
        h = self.nonl(self.convt7(h))  # (B, w/4, 4T/8, 65)
        if self.fuse_tail:  # convt8 then convt9 as one transposed convolution
            return linear_tail(self.convt8, self.convt9, h, gemm=self.gemm_conv)
        h = self.convt8(h)  # (B, w/8, 8T/8+1, 128)
        return self.convt9(h)  # (B, out_dim, 8T/8+1, 513)

    def align_frames(self, mask_logits: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Bring (B, frames', 513) mask logits to the spectrogram's ``n_frames`` frames.

        Extra frames are cropped at the end; missing frames are padded at the end by repeating
        the last frame (see the class docstring).

        Arguments
        ---------
        mask_logits : torch.Tensor
            (B, frames', 513) decoder output for one mask (e.g. ``decoder(maps)[:, 0]``).
        n_frames : int
            Frames of the spectrogram the mask applies to.

        Returns
        -------
        torch.Tensor
            (B, n_frames, 513) mask logits.
        """
        if mask_logits.dim() != 3 or mask_logits.shape[-1] != N_BINS:
            raise ValueError(
                f"align_frames expects (batch, frames, {N_BINS}) mask logits, got shape "
                f"{tuple(mask_logits.shape)}: select one output channel first, e.g. "
                f"decoder(maps)[:, 0], and use a spectrogram with n_fft=1024"
            )
        if abs(mask_logits.shape[1] - n_frames) > MAX_FRAME_DIFF:
            raise ValueError(
                f"align_frames got {mask_logits.shape[1]} decoder frames for a {n_frames}-frame "
                f"spectrogram (more than {MAX_FRAME_DIFF} apart): the maps do not come from this "
                f"spectrogram; feed the decoder the Cnn14 maps of the same clip"
            )
        return _fit_frames(mask_logits, n_frames, dim=1)
