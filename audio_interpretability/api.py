"""A Python API over the interpreters: load one, interpret arrays or files, save the result.

::

    from audio_interpretability import load_interpreter

    interpreter = load_interpreter("results/LMAC_cnn14/1234")  # a trained output folder
    # or from checkpoints and the YAML they were trained with (hparams/ of this repository)
    interpreter = load_interpreter(
        hparams_file="lmac_cnn14.yaml",
        embedding_model_path="results/pretrained/cnn14/embedding_model.ckpt",
        classifier_model_path="results/pretrained/cnn14/classifier.ckpt",
        pretrained_interpreter="results/LMAC_cnn14/1234/save/psi_model.ckpt",
    )
    result = interpreter.interpret_file("dog.wav")  # or interpreter.interpret(wav, 44100)
    print(result.predicted_class, result.probability)
    result.save("out")  # out/dog_interpretation.{wav,png,json}

The interpreter is built by the code ``recipes/ESC50/interpret/eval.py`` uses
(:func:`check_interpreter`, :func:`build_interpreter`, :func:`label_encoder_for`), and files go
through the one single-file path of :mod:`audio_interpretability.brains.evaluation` (checked
reader, long files in chunks). The command line over it is
``python -m audio_interpretability.interpret`` (docs/API.md).

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audio_interpretability.brains import INTERPRETERS, interpreter_class
from audio_interpretability.brains.trainable import PSI_FILE, TrainableInterpreterBrain

__all__ = [
    "InterpretationResult",
    "Interpreter",
    "build_interpreter",
    "check_interpreter",
    "label_encoder_for",
    "load_interpreter",
    "resolve_hparams_file",
]

#: The YAMLs of this repository (``hparams_file="lmac_cnn14.yaml"`` is looked up here).
HPARAMS_FOLDER = Path(__file__).resolve().parents[1] / "hparams"


# --------------------------------------------------------------------------------------------
# Building an interpreter (shared with recipes/ESC50/interpret/eval.py)
# --------------------------------------------------------------------------------------------
def check_interpreter(hparams: dict) -> type:
    """The Brain class of the YAML's ``int_method``, checked against the YAML (its hparams,
    ``pretrained_interpreter`` for trainable interpreters) before any work.

    Example
    -------
    >>> try:
    ...     check_interpreter({"int_method": "lmac"})
    ... except ValueError as err:
    ...     print(str(err)[:40])
    int_method lmac (LMAC) needs hparams thi
    """
    brain_class = interpreter_class(hparams["int_method"])
    missing = [k for k in brain_class.required_hparams if k not in hparams]
    if missing:
        yaml = INTERPRETERS[hparams["int_method"]][1]
        raise ValueError(
            f"int_method {hparams['int_method']} ({brain_class.__name__}) needs hparams this "
            f"YAML lacks ({', '.join(missing)}); pass that interpreter's YAML, e.g. "
            f"hparams/{yaml}"
        )
    if issubclass(brain_class, TrainableInterpreterBrain) and not hparams["pretrained_interpreter"]:
        raise ValueError(
            f"eval.py needs --pretrained_interpreter <save_folder>/psi_model.ckpt for "
            f"int_method {hparams['int_method']} (written by {brain_class.train_script})"
        )
    return brain_class


def build_interpreter(
    brain_class: type, hparams: dict, run_opts: dict, label_encoder=None, noise=None
):
    """The Brain of the YAML's ``int_method`` (``brain_class``: :func:`check_interpreter`'s).

    ``noise`` is the test noise built once by eval.py's ``main`` (each setting passes it or
    None to ``evaluate_setting``): given to the Brain so that it does not build a second source
    from the YAML that no setting uses.
    """
    return brain_class(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        label_encoder=label_encoder,
        noise=noise,
    )


def label_encoder_for(hparams: dict):
    """The classifier's label encoder (``label_encoder.txt`` next to ``classifier_model_path``),
    else the recipe's (``label_encoder_file``), else None (classes are then named by index)."""
    from speechbrain.dataio.encoder import CategoricalEncoder

    candidates = [hparams.get("label_encoder_file")]
    if hparams.get("classifier_model_path"):
        folder = os.path.dirname(str(hparams["classifier_model_path"]))
        candidates.insert(0, os.path.join(folder, "label_encoder.txt"))
    for path in candidates:
        if path and os.path.isfile(str(path)):
            encoder = CategoricalEncoder()
            encoder.load(str(path))
            return encoder
    return None


def resolve_hparams_file(hparams_file: str | os.PathLike) -> Path:
    """A YAML path, or the name of one in this repository's ``hparams/`` folder.

    Example
    -------
    >>> resolve_hparams_file("lmac_cnn14.yaml").name
    'lmac_cnn14.yaml'
    """
    path = Path(hparams_file)
    if path.is_file():
        return path
    if (HPARAMS_FOLDER / path).is_file():
        return HPARAMS_FOLDER / path
    known = ", ".join(sorted(p.name for p in HPARAMS_FOLDER.glob("*.yaml")))
    raise FileNotFoundError(
        f"hparams_file {str(hparams_file)!r} is neither a file nor a YAML of {HPARAMS_FOLDER}; "
        f"pass a path or one of: {known}"
    )


def _trained_psi(folder: Path, hparams: dict) -> str | None:
    """The interpreter network a training run in ``folder`` exported: the fine-tuned one
    (``save/finetuning/psi_model.ckpt``) of a fine-tuning run, else ``save/psi_model.ckpt``
    (looked up under ``folder`` first: the folder may have been moved since)."""
    from audio_interpretability.brains.lmac import FINETUNING_FOLDER

    saves = [folder / "save"]
    if hparams.get("save_folder"):
        saves.append(Path(str(hparams["save_folder"])))
    subfolders = [FINETUNING_FOLDER, ""] if hparams.get("finetuning") else [""]
    for sub in subfolders:
        for save in saves:
            if (save / sub / PSI_FILE).is_file():
                return str(save / sub / PSI_FILE)
    return None


def load_interpreter(
    folder: str | os.PathLike | None = None,
    *,
    hparams_file: str | os.PathLike | None = None,
    embedding_model_path: str | os.PathLike | None = None,
    classifier_model_path: str | os.PathLike | None = None,
    pretrained_interpreter: str | os.PathLike | None = None,
    overrides: dict | None = None,
    device: str | torch.device = "cpu",
) -> Interpreter:
    """A ready :class:`Interpreter`, from a trained output folder or from checkpoint paths.

    Arguments
    ---------
    folder : str or os.PathLike, optional
        The ``output_folder`` of a recipe run (``train_lmac.py``, ``train_l2i.py``,
        ``train_piq.py``, ``eval.py``, ``interpret_amt.py``): its ``hyperparams.yaml`` (the
        YAML with the run's overrides, written by SpeechBrain) is loaded, and for trainable
        interpreters the network the run exported (``save/psi_model.ckpt``, fine-tuning:
        ``save/finetuning/psi_model.ckpt``), else the run's ``pretrained_interpreter``. AMT and
        the gradient baselines train nothing: their folder only names the classifier.
    hparams_file : str or os.PathLike, optional
        Instead of ``folder``: a YAML path or the name of one in ``hparams/``
        (``"lmac_cnn14.yaml"``, ``"amt_focalnet.yaml"``, ...); with the checkpoint paths
        below and, for other model sizes than the YAML's defaults, ``overrides``.
    embedding_model_path, classifier_model_path : str or os.PathLike, optional
        The classifier's checkpoints (ours, or SpeechBrain's released ``embedding_model.ckpt``
        / ``classifier.ckpt``); override the folder's.
    pretrained_interpreter : str or os.PathLike, optional
        A ``psi_model.ckpt`` (ours or SpeechBrain's released L-MAC one); overrides the
        folder's.
    overrides : dict, optional
        More YAML keys (``{"base_channels": 8, "emb_dim": 256}``, ``{"quantile": 0.8}``). In a
        folder's ``hyperparams.yaml`` the references are already resolved: only keys the
        Brain reads directly change anything there.
    device : str or torch.device
        Where the models run (``"cpu"``, ``"cuda:0"``).

    Returns
    -------
    Interpreter

    Raises
    ------
    ValueError
        Neither or both of ``folder`` and ``hparams_file``; an interpreter the YAML cannot
        build (see :func:`check_interpreter`); ``cuda`` without a GPU; ``overrides`` naming
        a key the YAML does not have.
    FileNotFoundError
        A missing folder, ``hyperparams.yaml``, YAML or checkpoint.
    """
    from hyperpyyaml import load_hyperpyyaml

    from audio_interpretability.recipe_utils import check_published_keys, yaml_fixed_defaults

    if (folder is None) == (hparams_file is None):
        raise ValueError(
            "pass either a trained output folder (load_interpreter(folder)) or "
            "hparams_file=<YAML> with the checkpoint paths, not both or neither"
        )
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked but torch sees no GPU; pass device='cpu'")
    values = dict(overrides or {})
    values.setdefault("checkpointer", None)  # nothing is trained nor resumed: no save folder
    workdir = None
    if folder is not None:
        folder = Path(folder)
        yaml_path = folder / "hyperparams.yaml"
        if not yaml_path.is_file():
            raise FileNotFoundError(
                f"{yaml_path} does not exist; pass the output_folder of a recipe run (it holds "
                "hyperparams.yaml), or hparams_file=<YAML> with the checkpoint paths"
            )
    else:
        yaml_path = resolve_hparams_file(hparams_file)
        if "output_folder" not in values:  # nothing is written there; removed with the object
            workdir = tempfile.mkdtemp(prefix="audio_interpretability_")
            values["output_folder"] = workdir
        values.setdefault("data_folder", values["output_folder"])  # unused (!PLACEHOLDER)
    for key, path in (
        ("embedding_model_path", embedding_model_path),
        ("classifier_model_path", classifier_model_path),
        ("pretrained_interpreter", pretrained_interpreter),
    ):
        if path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{key} {path} does not exist; pass an existing file")
            values[key] = str(path)
    text = yaml_path.read_text(encoding="utf-8")
    known = set(re.findall(r"^([A-Za-z_]\w*)\s*:", text, flags=re.MULTILINE))  # top-level keys
    unknown = sorted(set(overrides or {}) - known)
    if unknown:  # a typo would otherwise be ignored (checkpointer: null may match nothing)
        raise ValueError(
            f"overrides {', '.join(unknown)} are not keys of {yaml_path}; pass its keys (see the "
            "YAML's comments)"
        )
    hparams = load_hyperpyyaml(text, values, overrides_must_match=False)
    check_published_keys(hparams, yaml_fixed_defaults(text))
    brain_class = interpreter_class(hparams["int_method"])
    if (
        folder is not None
        and pretrained_interpreter is None
        and issubclass(brain_class, TrainableInterpreterBrain)
    ):
        hparams["pretrained_interpreter"] = _trained_psi(folder, hparams) or hparams.get(
            "pretrained_interpreter"
        )
    brain_class = check_interpreter(hparams)
    run_opts = {"device": device, "noprogressbar": True}
    brain = build_interpreter(brain_class, hparams, run_opts, label_encoder_for(hparams))
    interpreter = Interpreter(brain, source=str(folder or yaml_path))
    if workdir is not None:
        weakref.finalize(interpreter, shutil.rmtree, workdir, True)
    return interpreter


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InterpretationResult:
    """The interpretation of one clip (all tensors on the CPU).

    Attributes
    ----------
    predicted_index : int
        The classifier's class (argmax of ``probabilities``).
    predicted_class : str
        Its name (the label encoder next to the classifier checkpoint; else the index).
    probability : float
        Its probability.
    probabilities : torch.Tensor
        (C,) class probabilities (a long file: the chunks' mean weighted by their lengths).
    mask : torch.Tensor
        (frames, bins) the interpreter's mask M in [0, 1].
    spectrogram : torch.Tensor
        (frames, bins) the interpretation spectrogram ``M * X`` (log1p magnitude).
    input_spectrogram : torch.Tensor
        (frames, bins) the input's ``X = log1p|STFT|``.
    waveform : torch.Tensor
        (T,) the listenable interpretation at ``sample_rate`` (as long as the input there).
    sample_rate : int
        The model's sample rate.
    hop_samples : int
        STFT hop (samples per frame).
    name : str
        Stem of the files :meth:`save` writes (``<file stem>_interpretation``, ``clip<i>``).
    panels : list
        ``(title, (frames, bins))`` figure panels (input, the interpreter's extras such as
        AMT's saliency, mask, ``M * X``).
    chunks : list
        One ``{"start_s", "end_s", "predicted_index", "predicted_class", "probability"}`` per
        chunk a long file was interpreted in (one for a short file or an array).
    source : str or None
        The file interpreted (None for an array).
    """

    predicted_index: int
    predicted_class: str
    probability: float
    probabilities: torch.Tensor
    mask: torch.Tensor
    spectrogram: torch.Tensor
    input_spectrogram: torch.Tensor
    waveform: torch.Tensor
    sample_rate: int
    hop_samples: int
    name: str
    panels: list = field(repr=False)
    chunks: list = field(repr=False)
    source: str | None = None

    def save(self, folder: str | os.PathLike, name: str | None = None) -> dict:
        """Write ``<folder>/<name>.wav`` (the interpretation), ``<name>.png`` (the figure) and
        ``<name>.json`` (the prediction), each atomically (:mod:`audio_interpretability.viz`).

        Returns
        -------
        dict
            ``{"wav": Path, "png": Path, "json": Path}``.
        """
        from audio_interpretability import viz
        from audio_interpretability.brains.evaluation import FIGURE_COLUMNS, pool_frames

        name = name or self.name
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        wav = viz.save_wav(folder / f"{name}.wav", self.waveform, self.sample_rate)
        pool = max(1, math.ceil(self.mask.shape[0] / FIGURE_COLUMNS))  # long files: averaged
        png = viz.plot_interpretation(
            folder / f"{name}.png",
            [(title, pool_frames(panel, pool)) for title, panel in self.panels],
            suptitle=f"{self.source and Path(self.source).name or name}: predicted "
            f"{self.predicted_class} ({self.probability:.2f})",
            sample_rate=self.sample_rate,
            hop_samples=self.hop_samples * pool,
        )
        summary = {
            "file": self.source,
            "predicted_index": self.predicted_index,
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "interpretation_wav": str(wav),
            "figure": str(png),
            "chunks": self.chunks,
        }
        json_file = folder / f"{name}.json"
        tmp = json_file.with_name(f".{json_file.name}.tmp")
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        os.replace(tmp, json_file)
        return {"wav": Path(wav), "png": Path(png), "json": json_file}


# --------------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------------
class Interpreter:
    """A loaded interpreter (any ``int_method``) with a small API; see :func:`load_interpreter`.

    Arguments
    ---------
    brain : InterpreterBrain
        A ready Brain (classifier and mask maker loaded), e.g. :func:`build_interpreter`'s.
    source : str, optional
        Where it was loaded from (shown in ``repr``).
    """

    def __init__(self, brain, source: str | None = None):
        self.brain = brain
        self.source = source
        brain.hparams.model.eval()
        brain.modules.eval()

    def __repr__(self) -> str:
        return (
            f"Interpreter({self.int_method}, {type(self.brain).__name__}, "
            f"sample_rate={self.sample_rate}, device={self.device}, source={self.source!r})"
        )

    @property
    def int_method(self) -> str:
        """The interpreter's ``int_method`` (``lmac``, ``amt``, ...)."""
        return str(self.brain.hparams.int_method)

    @property
    def sample_rate(self) -> int:
        """The model's sample rate (inputs are resampled to it)."""
        return int(self.brain.hparams.frontend.sample_rate)

    @property
    def device(self) -> torch.device:
        """Where the models run."""
        return torch.device(self.brain.device)

    @property
    def class_names(self) -> list[str] | None:
        """The classes by index (None without a label encoder)."""
        encoder = self.brain.label_encoder
        if encoder is None:
            return None
        return [str(encoder.ind2lab[i]) for i in range(len(encoder.ind2lab))]

    # ------------------------------------------------------------------ arrays
    @torch.no_grad()
    def interpret(
        self, wavs, sample_rate: int, *, channels: bool = False, names=None
    ) -> InterpretationResult | list[InterpretationResult]:
        """Interpret waveforms given as a tensor or an array.

        Each clip is downmixed to mono, resampled to :attr:`sample_rate` and peak-normalised
        (as the training clips and :meth:`interpret_file`), then interpreted whole (no
        chunking: for long recordings use :meth:`interpret_file`).

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            (T,) one clip; (B, T) a batch of clips; (C, T) one clip's channels with
            ``channels=True``; (B, C, T) a batch of multichannel clips.
        sample_rate : int
            Their sample rate (Hz).
        channels : bool
            A 2-D input is (C, T), the channels of one clip (default: (B, T), a batch).
        names : list of str, optional
            File stems for :meth:`InterpretationResult.save` (default ``clip<i>``).

        Returns
        -------
        InterpretationResult or list of InterpretationResult
            One result for one clip ((T,), or (C, T) with ``channels``), else one per clip.
        """
        from audio_interpretability.data.audio import _resample, peak_normalize

        wav = torch.as_tensor(np.asarray(wavs) if not torch.is_tensor(wavs) else wavs)
        if not wav.is_floating_point():
            raise ValueError(f"wavs must hold float samples, got {wav.dtype}; divide by 32768")
        single = wav.dim() == 1 or (wav.dim() == 2 and channels)
        if wav.dim() == 1:
            wav = wav[None, None]  # (1, 1, T)
        elif wav.dim() == 2:
            wav = wav[None] if channels else wav[:, None]  # (B, C, T)
        elif wav.dim() != 3:
            raise ValueError(
                f"wavs must be (T,), (B, T), (C, T) with channels=True or (B, C, T); got shape "
                f"{tuple(wav.shape)}"
            )
        if wav.shape[-1] == 0 or not torch.isfinite(wav).all():
            raise ValueError("wavs must be non-empty and finite (no NaN / Inf samples)")
        wav = wav.float().cpu().mean(dim=1)  # (B, C, T) -> (B, T)
        wav = _resample(wav, "the given array", int(sample_rate), self.sample_rate)
        results = self._interpret_batch(peak_normalize(wav), names)
        return results[0] if single else results

    def _interpret_batch(self, wavs: torch.Tensor, names=None) -> list[InterpretationResult]:
        """(B, T) peak-normalised waveforms at :attr:`sample_rate` -> one result each."""
        from audio_interpretability.brains.evaluation import _chunk_record, interpret_waveforms

        brain = self.brain
        brain.hparams.model.eval()
        brain.modules.eval()
        spec, mask_out, wav_int, probs = interpret_waveforms(brain, wavs)
        names = list(names) if names is not None else [f"clip{i}" for i in range(len(wavs))]
        results = []
        for i in range(wavs.shape[0]):
            panels = brain.interpretation_panels(spec.X, mask_out.mask, mask_out.extras, i)
            chunk = _chunk_record(brain, 0, wavs.shape[1], probs[i])
            results.append(
                self._result(
                    probs[i],
                    mask_out.mask[i],
                    spec.X[i],
                    wav_int[i],
                    names[i],
                    panels,
                    [chunk],
                )
            )
        return results

    def _result(self, probs, mask, X, wav_int, name, panels, chunks, source=None):
        index = int(probs.argmax())
        mask, X = mask.detach().float().cpu(), X.detach().float().cpu()
        return InterpretationResult(
            predicted_index=index,
            predicted_class=self.brain.class_name(index),
            probability=float(probs[index]),
            probabilities=probs,
            mask=mask,
            spectrogram=mask * X,
            input_spectrogram=X,
            waveform=wav_int.detach().float().cpu(),
            sample_rate=self.sample_rate,
            hop_samples=int(self.brain.hparams.frontend.hop_samples),
            name=name,
            panels=panels,
            chunks=chunks,
            source=source,
        )

    # ------------------------------------------------------------------ files
    @torch.no_grad()
    def interpret_file(
        self, path: str | os.PathLike, chunk_seconds: float | None = None
    ) -> InterpretationResult:
        """Interpret one audio file (any format libsndfile reads, any rate / channels).

        The file goes through the checked reader; a file longer than ``chunk_seconds`` is
        interpreted chunk by chunk, as ``eval.py --single_sample`` does
        (:func:`~audio_interpretability.brains.evaluation.iter_chunks`), and the chunks'
        masks, spectrograms and waveforms are joined (the whole file's result is held in
        memory: for very long files :meth:`interpret_file_to` streams to disk instead).

        Arguments
        ---------
        path : str or os.PathLike
            The audio file.
        chunk_seconds : float, optional
            Chunk length; default: the YAML's ``single_sample_chunk_s`` (5 s), None there:
            the whole file at once.

        Raises
        ------
        FileNotFoundError, IsADirectoryError, AudioError
            A missing file, a directory, or unusable audio (corrupt, truncated, NaN / Inf).
        """
        from audio_interpretability.brains.evaluation import (
            _chunk_record,
            chunk_samples,
            iter_chunks,
        )
        from audio_interpretability.brains.interpreter import InterpreterBrain
        from audio_interpretability.data.audio import read_audio, scan_audio

        brain = self.brain
        path = os.fspath(path)
        name = f"{Path(path).stem}_interpretation"
        chunk_seconds = chunk_seconds or self._chunk_seconds()
        info, peak = scan_audio(path)  # checked before any model work
        n_samples = math.ceil(info.frames * self.sample_rate / info.samplerate)
        frontend = brain.hparams.frontend
        chunk = n_samples if chunk_seconds is None else chunk_samples(frontend, chunk_seconds)
        if n_samples <= chunk:
            wav = read_audio(path, self.sample_rate, normalize=True)[None]  # (1, T)
            result = self._interpret_batch(wav, [name])[0]
            return _with_source(result, path)
        brain.hparams.model.eval()
        brain.modules.eval()
        pieces = list(iter_chunks(brain, path, info, peak, n_samples, chunk))
        probs = sum(c.probs * (c.length / n_samples) for c in pieces)  # (C,)
        X = torch.cat([c.X for c in pieces])  # (frames, bins)
        mask = torch.cat([c.mask for c in pieces])
        panels = InterpreterBrain.interpretation_panels(brain, X[None], mask[None], {}, 0)
        chunks = [_chunk_record(brain, c.start, c.start + c.length, c.probs) for c in pieces]
        wav_int = torch.cat([c.wav_int for c in pieces])  # (T,)
        return self._result(probs, mask, X, wav_int, name, panels, chunks, source=path)

    def interpret_file_to(
        self,
        path: str | os.PathLike,
        folder: str | os.PathLike,
        name: str | None = None,
        chunk_seconds: float | None = None,
    ):
        """Interpret one file straight to ``<folder>/<name>.{wav,png,json}`` (default name
        ``<file stem>_interpretation``) with the memory of one chunk: ``eval.py
        --single_sample``'s path
        (:func:`~audio_interpretability.brains.evaluation.interpret_single_sample`).

        Returns
        -------
        SingleSampleResult
            Predicted index, class, probability, the three paths and the chunks.
        """
        from audio_interpretability.brains.evaluation import interpret_single_sample

        name = name or f"{Path(path).stem}_interpretation"
        return interpret_single_sample(
            self.brain,
            os.fspath(path),
            str(Path(folder) / f"{name}.wav"),
            chunk_seconds=chunk_seconds or self._chunk_seconds(),
        )

    def _chunk_seconds(self) -> float | None:
        value = getattr(self.brain.hparams, "single_sample_chunk_s", None)
        return None if value is None else float(value)


def _with_source(result: InterpretationResult, path: str) -> InterpretationResult:
    from dataclasses import replace

    return replace(result, source=path)
