"""Non-negative dictionaries of spectrograms: the L2I NMF model, decompositions and masks.

L2I (Listen to Interpret, Parekh et al. 2022) explains a classifier with a dictionary ``W``
of non-negative spectral atoms, learned once on training spectrograms
(``recipes/ESC50/interpret/train_nmf.py hparams/nmf.yaml``); the interpreter then predicts
non-negative activations ``H`` of those atoms and listens to the atoms relevant to a class.

What this module holds, and where it comes from:

* **The amortised model**, as published: SpeechBrain's
  :class:`speechbrain.lobes.models.L2I.NMFEncoder` (three 1-D convolutions over time, ReLU
  output: ``(B, bins, frames) -> (B, K, frames)``) and
  :class:`speechbrain.lobes.models.L2I.NMFDecoderAudio` (``Xhat = relu(W) @ relu(H)``, one
  parameter ``W`` of shape ``(bins, K)``). They are used as they are, so their state dicts are
  the published files: ``nmf_decoder.ckpt`` is ``{"W": (bins, K)}`` (what the published
  checkpointer writes and ``l2i_cnn14.yaml``'s ``nmf_decoder_path`` loads), and
  ``nmf_encoder.ckpt`` the encoder's convolutions. Both read and write ``X = log1p(|STFT|)``
  (n_fft 1024 -> 513 bins), the spectrogram every interpreter here sees
  (:class:`audio_interpretability.features.Frontend`), in SpeechBrain's ``(B, bins, frames)``
  layout; :func:`amortised_decomposition` takes the ``(B, frames, bins)`` layout of the rest
  of the package.
* **Decomposition with a fixed dictionary** (:func:`decompose`): multiplicative updates of Lee
  and Seung (2001), Euclidean by default (the loss the published recipe trains ``W`` with),
  or generalised Kullback-Leibler. Written here because SpeechBrain's only NMF solver,
  ``speechbrain.processing.NMF.NMF_separate_spectra``, is a two-source separator: it takes two
  dictionaries, runs a fixed 1000 KL iterations on column-normalised data, draws its
  initialisation from the global RNG and returns the two reconstructions, not ``H``.
* **Loading / exporting** the decoder (:func:`load_nmf_decoder`, :func:`export_nmf_decoder`)
  with errors that name the fix, and the **dictionary** of a decoder (:func:`dictionary`).
* **L2I masks** (:func:`component_mask`): ``W_L H_L / (W H + eps)``, the published formula.

Using a trained dictionary (the L2I side)::

    decoder = hparams["nmf_decoder"]                        # NMFDecoderAudio(K, n_freq)
    load_nmf_decoder(hparams["nmf_decoder_path"], decoder)  # a published nmf_decoder.ckpt
    W = dictionary(decoder)                                 # (bins, K) >= 0
    H, Xhat = decompose(X, W, n_iter=100)                   # X (B, frames, bins) -> H (B, K, frames)
    M = component_mask(W, H, relevant)                      # (B, frames, bins) in [0, 1]
    X_int = M * X

Shapes: spectrograms ``X`` are ``(B, frames, bins)``, dictionaries ``W`` ``(bins, K)``,
activations ``H`` ``(B, K, frames)`` (the decoder's input layout).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from speechbrain.lobes.models.L2I import NMFDecoderAudio, NMFEncoder

from audio_interpretability.checkpointing import apply_umask

logger = logging.getLogger(__name__)

__all__ = [
    "DECODER_FILE",
    "DICTIONARY_FILE",
    "ENCODER_FILE",
    "LOSSES",
    "Decomposition",
    "NMFDecoderAudio",
    "NMFEncoder",
    "amortised_decomposition",
    "component_mask",
    "decompose",
    "dictionary",
    "export_nmf_decoder",
    "load_nmf_decoder",
    "plot_nmf",
    "read_nmf_state",
    "reconstruction_error",
]

#: The decoder's file (published name: the checkpointer's recoverable ``nmf_decoder``).
DECODER_FILE = "nmf_decoder.ckpt"
#: The encoder's file (the checkpointer's recoverable ``nmf_encoder``).
ENCODER_FILE = "nmf_encoder.ckpt"
#: Published default of ``nmf_savepath``: the dictionary ``relu(W)`` as a bare tensor.
DICTIONARY_FILE = "nmf_dictionary.pt"
#: Losses of :func:`decompose`.
LOSSES = ("euclidean", "kl")


class Decomposition(NamedTuple):
    """Activations and reconstruction of a spectrogram on a dictionary.

    Attributes
    ----------
    H : torch.Tensor
        (B, K, frames) non-negative activations.
    Xhat : torch.Tensor
        (B, frames, bins) reconstruction ``(W @ H)`` transposed to the layout of ``X``.
    """

    H: torch.Tensor
    Xhat: torch.Tensor


# -------------------------------------------------------------------------------- checks
def _check_nonnegative(name: str, tensor: torch.Tensor, fix: str) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} has NaN or infinite values; {fix}")
    if tensor.numel() and tensor.min() < 0:
        raise ValueError(f"{name} has negative values (min {tensor.min().item():.3g}); {fix}")


def _check_pair(X: torch.Tensor, W: torch.Tensor) -> None:
    """``X`` (B, frames, bins) and ``W`` (bins, K), both finite and non-negative."""
    if not isinstance(X, torch.Tensor) or X.dim() != 3:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(
            f"X must be a (batch, frames, bins) tensor, got {shape}; add a batch dimension "
            "with X[None] for one spectrogram."
        )
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise ValueError(
            f"W must be a (bins, K) dictionary, got {shape}; take it from a decoder with "
            "dictionary(decoder)."
        )
    if W.shape[0] != X.shape[-1]:
        raise ValueError(
            f"X has {X.shape[-1]} frequency bins but W has {W.shape[0]} (W is (bins, K)); "
            "use a dictionary learned with the same n_fft (bins = n_fft // 2 + 1), or pass "
            "X as (batch, frames, bins)."
        )
    _check_nonnegative(
        "X", X, "pass a magnitude spectrogram such as log1p(|STFT|) (clamp_min(0) if needed)."
    )
    _check_nonnegative("W", W, "pass dictionary(decoder), which applies the decoder's ReLU.")


# -------------------------------------------------------------------------------- dictionary
def dictionary(decoder: NMFDecoderAudio) -> torch.Tensor:
    """The non-negative dictionary ``relu(W)`` (bins, K) of a decoder (its ``return_W``).

    The tensor keeps the autograd graph of ``decoder.W``; detach it (or call under
    ``torch.no_grad()``) when the decoder is frozen.

    Example
    -------
    >>> decoder = NMFDecoderAudio(n_comp=4, n_freq=513)
    >>> W = dictionary(decoder)
    >>> W.shape, bool((W >= 0).all())
    (torch.Size([513, 4]), True)
    """
    if not hasattr(decoder, "return_W"):
        raise ValueError(
            f"expected an NMFDecoderAudio (hparam nmf_decoder), got {type(decoder).__name__}"
        )
    return decoder.return_W()


# -------------------------------------------------------------------------------- decompose
def _initial_H(V: torch.Tensor, W: torch.Tensor, eps: float) -> torch.Tensor:
    """Deterministic start: every atom of frame t gets ``sum_f V[f, t] / sum(W)``, so that
    ``W H0`` has the energy (column sums) of ``V``. (B, K, frames)."""
    K = W.shape[1]
    scale = V.sum(dim=1, keepdim=True) / (W.sum() + eps)  # (B, 1, frames)
    return scale.expand(-1, K, -1).clone()


@torch.no_grad()
def decompose(
    X: torch.Tensor,
    W: torch.Tensor,
    n_iter: int = 100,
    loss: str = "euclidean",
    H0: torch.Tensor | None = None,
    eps: float = 1e-10,
) -> Decomposition:
    """Non-negative activations of spectrograms on a fixed dictionary (Lee & Seung updates).

    Minimises, over ``H >= 0`` with ``W`` fixed, for each example (``V = X^T``, (bins, frames)):

    * ``loss="euclidean"`` (default; the published NMF training loss):
      ``||V - W H||^2``, update ``H <- H * (W^T V) / (W^T W H + eps)``;
    * ``loss="kl"``: generalised KL divergence ``D(V || W H)``, update
      ``H <- H * (W^T (V / (W H + eps))) / (W^T 1 + eps)``.

    Both updates never increase their loss and keep ``H`` non-negative. Runs without autograd.

    Arguments
    ---------
    X : torch.Tensor
        (B, frames, bins) non-negative spectrograms: ``log1p(|STFT|)``, an interpretation
        ``M * X``, any magnitude.
    W : torch.Tensor
        (bins, K) non-negative dictionary (:func:`dictionary`).
    n_iter : int
        Number of multiplicative updates (0 returns the initialisation).
    loss : str
        ``"euclidean"`` or ``"kl"``.
    H0 : torch.Tensor, optional
        (B, K, frames) non-negative start, e.g. the amortised encoder's output (entries at 0
        stay 0). Default: every atom of frame ``t`` at ``sum_f X[t, f] / sum(W)``.
    eps : float
        Added to denominators.

    Returns
    -------
    Decomposition
        ``H`` (B, K, frames) >= 0 and ``Xhat`` (B, frames, bins) = ``(W H)^T``.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.rand(64, 5, generator=g)
    >>> H = torch.rand(2, 5, 30, generator=g)
    >>> X = (W @ H).transpose(1, 2)  # (2, 30, 64)
    >>> first = reconstruction_error(X, decompose(X, W, n_iter=1).Xhat)
    >>> out = decompose(X, W, n_iter=200)
    >>> out.H.shape, out.Xhat.shape
    (torch.Size([2, 5, 30]), torch.Size([2, 30, 64]))
    >>> bool((reconstruction_error(X, out.Xhat) < first).all())
    True
    """
    _check_pair(X, W)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter}")
    W = W.to(X.dtype)
    V = X.transpose(1, 2)  # (B, bins, frames)
    B, _, frames = V.shape
    K = W.shape[1]
    if H0 is None:
        H = _initial_H(V, W, eps)
    else:
        if tuple(H0.shape) != (B, K, frames):
            raise ValueError(
                f"H0 must be (batch, K, frames) = {(B, K, frames)}, got {tuple(H0.shape)}"
            )
        _check_nonnegative("H0", H0, "start from non-negative activations (e.g. H0.relu()).")
        H = H0.to(X.dtype).clone()
    Wt = W.t()  # (K, bins)
    if loss == "euclidean":
        WtV = Wt @ V  # (B, K, frames), fixed
        WtW = Wt @ W  # (K, K)
        for _ in range(int(n_iter)):
            H = H * WtV / (WtW @ H + eps)
    else:
        Wt1 = W.sum(dim=0)[:, None]  # (K, 1) = W^T 1
        for _ in range(int(n_iter)):
            H = H * (Wt @ (V / (W @ H + eps))) / (Wt1 + eps)
    Xhat = (W @ H).transpose(1, 2)  # (B, frames, bins)
    return Decomposition(H=H, Xhat=Xhat)


def reconstruction_error(X: torch.Tensor, Xhat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example: ``mean((X - Xhat)^2)`` over frames and bins, (B,).

    The batch mean of this is the published NMF loss (``((target - predictions) ** 2).mean()``
    for equal-length clips).

    Example
    -------
    >>> reconstruction_error(torch.ones(2, 3, 4), torch.zeros(2, 3, 4))
    tensor([1., 1.])
    """
    if X.shape != Xhat.shape:
        raise ValueError(
            f"X {tuple(X.shape)} and Xhat {tuple(Xhat.shape)} differ; both are "
            "(batch, frames, bins)"
        )
    return ((X - Xhat) ** 2).flatten(1).mean(dim=1)


def amortised_decomposition(
    encoder: NMFEncoder, decoder: NMFDecoderAudio, X: torch.Tensor
) -> Decomposition:
    """The published amortised NMF: ``H = encoder(X^T)``, ``Xhat = decoder(H)^T``.

    Arguments
    ---------
    encoder : NMFEncoder
        Maps (B, bins, frames) to (B, K, frames) (ReLU output).
    decoder : NMFDecoderAudio
        ``relu(W) @ relu(H)``.
    X : torch.Tensor
        (B, frames, bins) ``log1p(|STFT|)``.

    Returns
    -------
    Decomposition
        ``H`` (B, K, frames) and ``Xhat`` (B, frames, bins); keeps the autograd graph.

    Example
    -------
    >>> enc, dec = NMFEncoder(n_freq=513, n_comp=4), NMFDecoderAudio(n_comp=4, n_freq=513)
    >>> out = amortised_decomposition(enc, dec, torch.rand(2, 20, 513))
    >>> out.H.shape, out.Xhat.shape
    (torch.Size([2, 4, 20]), torch.Size([2, 20, 513]))
    """
    if X.dim() != 3:
        raise ValueError(f"X must be (batch, frames, bins), got {tuple(X.shape)}")
    n_freq = getattr(decoder, "module", decoder).W.shape[0]  # .module: DDP-wrapped
    if X.shape[-1] != n_freq:
        raise ValueError(
            f"X has {X.shape[-1]} bins but the decoder {n_freq}; pass X as "
            "(batch, frames, bins) with bins = n_fft // 2 + 1 = N_FREQ."
        )
    H = encoder(X.transpose(1, 2))  # (B, K, frames)
    Xhat = decoder(H).transpose(1, 2)  # (B, frames, bins)
    return Decomposition(H=H, Xhat=Xhat)


# -------------------------------------------------------------------------------- L2I masks
def component_mask(
    W: torch.Tensor, H: torch.Tensor, components: torch.Tensor, eps: float = 1e-10
) -> torch.Tensor:
    """L2I's mask: the share of the selected atoms in the reconstruction, ``W_L H_L / (W H + eps)``.

    As published (``train_l2i.py``: ``W[:, L] @ H[L] / (W @ H + eps)``, eps 1e-10), ``H`` is
    used as given; with ``H >= 0`` the mask is in [0, 1].

    Arguments
    ---------
    W : torch.Tensor
        (bins, K) dictionary.
    H : torch.Tensor
        (B, K, frames) activations.
    components : torch.Tensor
        The selected atoms ``L``: a (B, K) boolean / 0-1 selection per example, or a 1-D
        tensor of atom indices used for every example.
    eps : float
        Added to the denominator.

    Returns
    -------
    torch.Tensor
        (B, frames, bins) mask.

    Example
    -------
    >>> W = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # 2 bins, 2 atoms
    >>> H = torch.ones(1, 2, 3)
    >>> component_mask(W, H, torch.tensor([1]))[0, 0]  # bin 0: atom 0 only; bin 1: half
    tensor([0.0000, 0.5000])
    """
    if W.dim() != 2 or H.dim() != 3 or H.shape[1] != W.shape[1]:
        raise ValueError(
            f"expected W (bins, K) and H (batch, K, frames), got W {tuple(W.shape)} and "
            f"H {tuple(H.shape)}"
        )
    B, K, _ = H.shape
    if components.dim() == 1 and components.dtype != torch.bool:
        selection = torch.zeros(K, dtype=H.dtype, device=H.device)
        selection[components.long()] = 1.0
        selection = selection.expand(B, K)
    elif tuple(components.shape) == (B, K):
        selection = components.to(H.dtype)
    else:
        raise ValueError(
            f"components must be atom indices (1-D) or a (batch, K) = {(B, K)} selection, "
            f"got {tuple(components.shape)} {components.dtype}"
        )
    selected = W @ (H * selection[:, :, None])  # (B, bins, frames)
    full = W @ H  # (B, bins, frames)
    return (selected / (full + eps)).transpose(1, 2)  # (B, frames, bins)


# -------------------------------------------------------------------------------- files
def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 3 and not os.path.isabs(path) and not os.path.isdir(parts[0])


def read_nmf_state(path: str | os.PathLike, key: str = "nmf_decoder_path") -> dict:
    """The ``{"W": (bins, K)}`` state of an NMF decoder file, checked (see
    :func:`load_nmf_decoder` for the files accepted); ``key`` is the hparam the errors name.

    Raises
    ------
    FileNotFoundError
        No such file, or a model-hub id (nothing is downloaded here).
    ValueError
        Not an NMF decoder file.
    """
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, DECODER_FILE)
    if not os.path.isfile(path):
        hint = (
            "it looks like a model-hub id and nothing is downloaded here; "
            if _looks_like_hub_id(path)
            else ""
        )
        raise FileNotFoundError(
            f"NMF decoder {path!r} not found: {hint}pass --{key} "
            f"<save_folder>/{DECODER_FILE} written by recipes/ESC50/interpret/train_nmf.py "
            "(or a published nmf_decoder.ckpt downloaded by hand)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, torch.Tensor):
        state = {"W": state}
    if not isinstance(state, dict) or set(state) != {"W"}:
        keys = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} is not an NMF decoder (expected a state dict {{'W': (bins, K)}} or a "
            f"(bins, K) tensor, found {keys}); pass the nmf_decoder.ckpt of a train_nmf.py run."
        )
    return state


def load_nmf_decoder(path: str | os.PathLike, decoder: NMFDecoderAudio) -> NMFDecoderAudio:
    """Load a trained dictionary into ``decoder`` (in place) and return it.

    Accepts the files the published recipe writes:

    * ``nmf_decoder.ckpt``: the decoder's state dict ``{"W": (bins, K)}`` (the checkpointer's
      file, the one ``l2i_cnn14.yaml``'s ``nmf_decoder_path`` names), or a folder holding it
      (a ``CKPT+...`` folder or a ``save_folder``);
    * ``nmf_dictionary.pt`` (``save_nmfdictionary``): the bare tensor ``relu(W)`` (bins, K);
      since ``relu(relu(W)) = relu(W)``, the decoder then computes the same outputs.

    Raises
    ------
    FileNotFoundError
        No such file, or a model-hub id (nothing is downloaded here).
    ValueError
        Not an NMF decoder file, or another (bins, K) than ``decoder``.

    Example
    -------
    >>> import tempfile
    >>> trained = NMFDecoderAudio(n_comp=4, n_freq=513)
    >>> path = export_nmf_decoder(trained, tempfile.mkdtemp())
    >>> decoder = load_nmf_decoder(path, NMFDecoderAudio(n_comp=4, n_freq=513))
    >>> torch.equal(decoder.W, trained.W)
    True
    """
    state = read_nmf_state(path)
    own = tuple(decoder.W.shape)
    if tuple(state["W"].shape) != own:
        raise ValueError(
            f"{path} holds a dictionary of shape (bins, K) = {tuple(state['W'].shape)} but the "
            f"YAML builds {own}; pass the K and bins it was trained with (--K, and --N_FREQ in "
            "nmf.yaml / --n_freq in l2i YAMLs)."
        )
    decoder.load_state_dict(state, strict=True)
    return decoder


def export_nmf_decoder(decoder: NMFDecoderAudio, path: str | os.PathLike) -> Path:
    """Save ``decoder.state_dict()`` (published ``nmf_decoder.ckpt`` layout) atomically.

    ``path`` is a file, or a folder that receives ``nmf_decoder.ckpt``. Returns the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DECODER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in decoder.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        apply_umask(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_nmf(
    path: str | os.PathLike,
    W: torch.Tensor,
    X: torch.Tensor,
    Xhat: torch.Tensor,
    n_atoms: int = 16,
    title: str = "",
) -> Path:
    """PNG of the first ``n_atoms`` atoms of ``W`` (bins, K) and of one ``X`` / ``Xhat``
    (frames, bins) pair, side by side (``audio_interpretability.viz.plot_interpretation``).

    Example
    -------
    >>> import tempfile
    >>> out = plot_nmf(tempfile.mkdtemp() + "/nmf.png", torch.rand(65, 8), torch.rand(20, 65),
    ...                torch.rand(20, 65))
    >>> out.stat().st_size > 0
    True
    """
    from audio_interpretability.viz import plot_interpretation

    if W.dim() != 2 or X.dim() != 2 or X.shape != Xhat.shape or X.shape[1] != W.shape[0]:
        raise ValueError(
            f"expected W (bins, K), X and Xhat (frames, bins); got {tuple(W.shape)}, "
            f"{tuple(X.shape)}, {tuple(Xhat.shape)}"
        )
    atoms = W[:, :n_atoms].detach().t()  # (atoms, bins): one column per atom in the figure
    err = float(((X - Xhat) ** 2).mean())
    panels = [(f"first {atoms.shape[0]} atoms", atoms), ("X", X), (f"W H (MSE {err:.4f})", Xhat)]
    return plot_interpretation(path, [(t, p.detach().cpu()) for t, p in panels], title)
