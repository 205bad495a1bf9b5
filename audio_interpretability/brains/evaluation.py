"""The one evaluation path of every interpreter (AMT, L-MAC, L2I, PIQ, ...).

Everything here takes any :class:`~audio_interpretability.brains.interpreter.InterpreterBrain`
and goes through its :meth:`~InterpreterBrain.interpret` pipeline (front-end -> frozen
classifier -> ``make_mask``) and its one saving routine:

* :func:`evaluate_setting`: one evaluation setting (clean, WHAM!, mixtures, white noise,
  speech: the dataset and the noise source decide) -> ``<folder>/test_metrics.json``;
* :func:`evaluate_overlap`: the published AMT overlap test (a mixture of two clips of
  different classes, :mod:`audio_interpretability.data.overlap`) ->
  ``overlap_metrics.json``;
* :func:`interpret_single_sample`: one audio file -> interpretation WAV + PNG.

The noise source is built once by the recipe (``WhamNoise.from_hparams``) and passed in; the
brain's own is swapped for the duration of a setting (:meth:`InterpreterBrain.using_noise`)
and re-seeded, so each setting sees the same noise in every run. No hparam is rewritten.

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from audio_interpretability import metrics as M
from audio_interpretability.brains.interpreter import InterpreterBrain
from audio_interpretability.data.overlap import (
    OverlapPairs,
    fit_length,
    mass_on,
    overlap_pairs,
    overlap_weights,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkInterpretation",
    "SingleSampleResult",
    "evaluate_overlap",
    "chunk_samples",
    "interpret_waveforms",
    "iter_chunks",
    "pool_frames",
    "evaluate_setting",
    "interpret_single_sample",
    "overlap_batch",
]


def evaluate_setting(
    brain: InterpreterBrain,
    test_set,
    metrics_folder: str | os.PathLike,
    loader_kwargs: dict,
    noise=None,
    **evaluate_kwargs,
) -> dict:
    """Evaluate ``brain`` on ``test_set`` and write ``<metrics_folder>/test_metrics.json``.

    Arguments
    ---------
    brain : InterpreterBrain
        Any interpreter.
    test_set : torch.utils.data.Dataset
        Test items ("id", "sig", "class_string_encoded", ...), e.g. a DynamicItemDataset or
        an out-of-domain dataset of :mod:`audio_interpretability.data.ood`.
    metrics_folder : str or os.PathLike
        Where ``test_metrics.json`` (and saved interpretations) go.
    loader_kwargs : dict
        DataLoader options (batch_size, ...); PaddedBatch collation is added.
    noise : audio_interpretability.data.wham.WhamNoise, optional
        Noise mixed into every clip (re-seeded first: the same noise in every run); None:
        the clips as they are.
    **evaluate_kwargs
        Passed to ``brain.evaluate`` (e.g. ``min_key="loss"`` to load the best checkpoint).

    Returns
    -------
    dict
        The summary written to ``test_metrics.json`` (plain floats).
    """
    if noise is not None:
        noise.reset()
    saved_folder, brain.metrics_folder = brain.metrics_folder, Path(metrics_folder)
    try:
        with brain.using_noise(noise):
            brain.evaluate(
                test_set,
                test_loader_kwargs={"collate_fn": PaddedBatch, **dict(loader_kwargs)},
                **evaluate_kwargs,
            )
    finally:
        brain.metrics_folder = saved_folder
    summary = dict(brain.last_summary)
    logger.info("Metrics of %s: %s", metrics_folder, summary)
    return summary


# --------------------------------------------------------------------------------------------
# The overlap test (published in interpret_amt.py; here for every interpreter)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def overlap_batch(
    brain: InterpreterBrain,
    batch1: PaddedBatch,
    batch2: PaddedBatch,
    overlap_type: str = "mixture",
    mix_weights=(0.8, 0.2),
) -> tuple[dict, dict]:
    """Interpret the overlap of two batches of clips; the mask is computed once.

    s1 and s2 (peak-normalised by the data pipeline) are combined as ``w1 * s1 + w2 * s2``
    (:func:`~audio_interpretability.data.overlap.overlap_weights`); s2 is cropped /
    zero-padded to s1's length.

    Returns
    -------
    values : dict
        Per-sample (B,) metrics: the faithfulness metrics of
        :func:`~audio_interpretability.metrics.compute_faithfulness_metrics` on the mixture,
        ``pred_is_s1`` / ``pred_is_s2`` (the classifier picks s1's / s2's class), and, when
        both batches carry stems, ``mask_on_s1_event`` / ``mask_on_s2_event`` (fraction of the
        mask on the bins where that source's weighted event dominates the rest of the
        mixture), ``mask_on_pred_event`` (the same for the source whose class is predicted; 0
        when the prediction is neither class) and ``s1_event_area`` / ``s2_event_area``
        (fraction of all bins in each region: what a random mask scores on average).
    tensors : dict
        ``mixture``, ``s1``, ``s2`` (B, T) (weighted sources), ``spec``, ``mask``, ``extras``
        (the interpreter's), ``logits``, ``labels1``, ``labels2`` and, with stems, ``truth1``,
        ``truth2`` (B, frames, bins), for saving.
    """
    batch1, batch2 = batch1.to(brain.device), batch2.to(brain.device)
    s1, rel_lens = batch1.sig.data, batch1.sig.lengths  # (B, T), (B,)
    n_samples = s1.shape[1]
    s2 = fit_length(batch2.sig.data, n_samples)  # (B, T)
    lengths = torch.round(rel_lens * n_samples).long()  # (B,)
    w1, w2 = overlap_weights(lengths, n_samples, overlap_type, mix_weights)
    part1, part2 = w1 * s1, w2 * s2
    mixture = part1 + part2  # (B, T)

    spec, clf, mask_out = brain.interpret(mixture)
    mask = mask_out.mask
    logits_in, logits_out = brain.masked_passes(spec.X, [mask])
    values = M.compute_faithfulness_metrics(clf.logits, logits_in, logits_out, mask)

    labels1 = batch1.class_string_encoded.data.view(-1)
    labels2 = batch2.class_string_encoded.data.view(-1)
    pred = clf.logits.argmax(dim=-1)
    values["pred_is_s1"] = (pred == labels1).float()
    values["pred_is_s2"] = (pred == labels2).float()
    tensors = {
        "mixture": mixture,
        "s1": part1,
        "s2": part2,
        "spec": spec,
        "mask": mask,
        "extras": mask_out.extras,
        "logits": clf.logits,
        "labels1": labels1,
        "labels2": labels2,
    }
    if hasattr(batch1, "event_sig") and hasattr(batch2, "event_sig"):
        from audio_interpretability.data.synthetic import ground_truth_mask

        event1 = w1 * batch1.event_sig.data
        event2 = w2 * fit_length(batch2.event_sig.data, n_samples)
        frontend = brain.hparams.frontend
        frames = spec.X.shape[1]  # the frames the mask covers
        truth1 = ground_truth_mask(event1, mixture - event1, frontend)[:, :frames]
        truth2 = ground_truth_mask(event2, mixture - event2, frontend)[:, :frames]
        on1, on2 = mass_on(mask, truth1), mass_on(mask, truth2)
        values["mask_on_s1_event"] = on1
        values["mask_on_s2_event"] = on2
        values["mask_on_pred_event"] = torch.where(
            pred == labels1, on1, torch.where(pred == labels2, on2, torch.zeros_like(on1))
        )
        values["s1_event_area"] = truth1.float().reshape(truth1.shape[0], -1).mean(dim=1)
        values["s2_event_area"] = truth2.float().reshape(truth2.shape[0], -1).mean(dim=1)
        tensors["truth1"], tensors["truth2"] = truth1, truth2
    return values, tensors


def evaluate_overlap(
    brain: InterpreterBrain,
    dataset,
    loader_kwargs: dict | None = None,
    overlap_type: str = "mixture",
    mix_weights=(0.8, 0.2),
) -> dict:
    """Overlap test: interpret mixtures of two test clips of different classes.

    Every clip i is s1 once, paired with the next clip of another class as s2
    (:func:`~audio_interpretability.data.overlap.overlap_pairs`). Batches of pairs go through
    :func:`overlap_batch`; the first ``n_saved_interpretations`` are saved under
    ``<metrics_folder>/overlap/`` (mixture as ``original.wav``, weighted sources ``s1.wav`` /
    ``s2.wav``, ``interpretation.wav`` and a PNG), and the mean of every metric goes to
    ``<metrics_folder>/overlap_metrics.json``. Under DDP each process takes a shard of the
    pairs and the summary is gathered (call it on every process).

    Arguments
    ---------
    brain : InterpreterBrain
        Any interpreter.
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The test set (items with ``sig``, ``class_string``, ``class_string_encoded`` and,
        for ground-truth scores, ``event_sig``).
    loader_kwargs : dict, optional
        ``batch_size`` and ``num_workers`` of the pair loader (other keys are ignored).
    overlap_type : str
        ``"mixture"`` or ``"concat"`` (published ``concat_sources``).
    mix_weights : sequence of float
        The two weights of ``"mixture"`` (published 0.8, 0.2).

    Returns
    -------
    dict
        The metric summary written to ``overlap_metrics.json``.
    """
    loader_kwargs = dict(loader_kwargs or {})
    with dataset.output_keys_as(["class_string"]):
        labels = [dataset[i]["class_string"] for i in range(len(dataset))]
    pairs = overlap_pairs(labels)
    ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if ddp else 0
    world = torch.distributed.get_world_size() if ddp else 1
    loader = torch.utils.data.DataLoader(
        OverlapPairs(dataset, pairs[rank::world]),
        batch_size=int(loader_kwargs.get("batch_size", 1)),
        num_workers=int(loader_kwargs.get("num_workers", 0)),
        shuffle=False,
        collate_fn=OverlapPairs.collate,
    )
    brain.hparams.model.eval()
    brain.modules.eval()
    accumulator = M.MetricAccumulator()
    saved = 0
    for batch1, batch2 in loader:
        with brain.evaluation_ctx:
            values, t = overlap_batch(brain, batch1, batch2, overlap_type, mix_weights)
        accumulator.update(values)
        budget = int(brain.hparams.n_saved_interpretations) - saved
        if brain.hparams.save_interpretations and budget > 0 and rank == 0:
            preds = t["logits"].argmax(dim=-1)
            names = [
                f"{batch1.id[i]}+{batch2.id[i]}_true-{brain.class_name(t['labels1'][i])}"
                f"+{brain.class_name(t['labels2'][i])}_pred-{brain.class_name(preds[i])}"
                for i in range(min(budget, len(batch1.id)))
            ]
            truths = {}
            if "truth1" in t:
                truths = {"s1 event bins": t["truth1"], "s2 event bins": t["truth2"]}
            saved += brain.save_interpretations(
                brain.metrics_folder / "overlap",
                names,
                t["mixture"],
                t["spec"],
                t["mask"],
                t["extras"],
                truths,
                extra_wavs={"s1": t["s1"], "s2": t["s2"]},
            )
    summary = accumulator.summarize()
    if sb.utils.distributed.if_main_process():
        brain.write_metrics(summary, "overlap_metrics.json")
    return summary


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------
class SingleSampleResult(NamedTuple):
    """What :func:`interpret_single_sample` returns."""

    predicted_index: int
    predicted_class: str
    probability: float
    wav_path: Path
    png_path: Path
    json_path: Path
    #: One ``{"start_s", "end_s", "predicted_index", "predicted_class", "probability"}`` per
    #: chunk the file was interpreted in (one for a file no longer than a chunk).
    chunks: list


#: Most time columns of a long file's figure (frames are averaged in groups above this).
FIGURE_COLUMNS = 2000


def chunk_samples(frontend, chunk_seconds: float) -> int:
    """Samples per chunk of a long file: ``chunk_seconds`` rounded to a whole number of
    ``8 * hop`` samples, so that a chunk's STFT has ``8 k + 1`` frames and interpreters that
    crop to a multiple of 8 frames (published L-MAC) still cover all of it.

    Example
    -------
    >>> from audio_interpretability.features import Frontend
    >>> frontend = Frontend(sample_rate=16000)
    >>> n = chunk_samples(frontend, 5.0)
    >>> n % (8 * frontend.hop_samples), frontend.n_frames(n) % 8
    (0, 1)
    """
    chunk_seconds = float(chunk_seconds)
    if not chunk_seconds > 0:
        raise ValueError(
            f"single_sample_chunk_s must be a positive number of seconds, got {chunk_seconds}; "
            "pass e.g. --single_sample_chunk_s 5 (the training clips' length)."
        )
    unit = 8 * frontend.hop_samples
    return max(1, round(chunk_seconds * frontend.sample_rate / unit)) * unit


@torch.no_grad()
def interpret_single_sample(
    brain: InterpreterBrain,
    wav_path: str,
    output_path: str,
    chunk_seconds: float | None = None,
) -> SingleSampleResult:
    """Interpret one audio file and write the listenable interpretation, a figure and a JSON.

    The file may have any sample rate and channel count (downmixed, resampled to the
    front-end's rate, peak-normalised as the training clips). Writes ``output_path`` (WAV;
    ``.wav`` is appended when missing), the same path with ``.png`` and with ``.json`` (the
    prediction and, per chunk, its time span and prediction).

    A file longer than ``chunk_seconds`` is interpreted chunk by chunk (consecutive,
    non-overlapping chunks of :func:`chunk_samples`; the last one zero-padded for the
    classifier, its output trimmed): the classifier sees inputs of the length it was trained
    on, and memory does not grow with the file. Peak memory is that of one chunk's
    interpretation plus the figure's time-averaged arrays (at most :data:`FIGURE_COLUMNS`
    columns): the audio is checked in a first streaming pass (:func:`scan_audio`: corrupt,
    truncated, NaN / Inf, so a bad file stops before any model work), read chunk by chunk,
    and the WAV is written piece by piece (it appears only once complete). The file's
    prediction is the mean of the chunks' class probabilities, weighted by their lengths.
    Each chunk's mask is computed from that chunk alone.

    Arguments
    ---------
    brain : InterpreterBrain
        A ready interpreter (classifier and mask maker loaded).
    wav_path : str
        Input audio file.
    output_path : str
        Path of the interpretation WAV.
    chunk_seconds : float, optional
        Chunk length (seconds; e.g. the training clips' 5 s). None: the whole file at once.

    Returns
    -------
    SingleSampleResult
        Predicted class index, name and probability, the written paths and the chunks.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, AudioError
        ``wav_path`` is missing, a directory, or not usable audio (corrupt, empty, truncated,
        NaN / Inf samples); see :func:`audio_interpretability.data.audio.read_audio`.
    """
    from audio_interpretability.data.audio import scan_audio

    frontend = brain.hparams.frontend
    sample_rate = frontend.sample_rate
    # checked before any model work: missing file, directory, corrupt / truncated, NaN / Inf
    info, peak = scan_audio(wav_path)
    n_samples = math.ceil(info.frames * sample_rate / info.samplerate)
    chunk = n_samples if chunk_seconds is None else chunk_samples(frontend, chunk_seconds)
    brain.hparams.model.eval()
    brain.modules.eval()
    out = Path(output_path)
    if out.suffix.lower() != ".wav":
        out = out.with_name(out.name + ".wav")
    if n_samples <= chunk:
        return _interpret_whole_file(brain, wav_path, out)
    return _interpret_in_chunks(brain, wav_path, out, info, peak, n_samples, chunk)


def _single_sample_outputs(brain, wav_path, out, probs, chunks, panels, hop_samples):
    """Write the figure and the JSON of :func:`interpret_single_sample`; the result."""
    from audio_interpretability import viz

    index = int(probs.argmax())
    name = brain.class_name(index)
    png_file = viz.plot_interpretation(
        out.with_suffix(".png"),
        panels,
        suptitle=f"{Path(wav_path).name}: predicted {name} ({float(probs[index]):.2f})",
        sample_rate=brain.hparams.frontend.sample_rate,
        hop_samples=hop_samples,
    )
    summary = {
        "file": str(wav_path),
        "predicted_index": index,
        "predicted_class": name,
        "probability": float(probs[index]),
        "interpretation_wav": str(out),
        "figure": str(png_file),
        "chunks": chunks,
    }
    json_file = out.with_suffix(".json")
    tmp = json_file.with_name(f".{json_file.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, json_file)
    return SingleSampleResult(
        index, name, float(probs[index]), out, Path(png_file), json_file, chunks
    )


def _chunk_record(brain, start: int, end: int, probs: torch.Tensor) -> dict:
    rate = brain.hparams.frontend.sample_rate
    index = int(probs.argmax())
    return {
        "start_s": start / rate,
        "end_s": end / rate,
        "predicted_index": index,
        "predicted_class": brain.class_name(index),
        "probability": float(probs[index]),
    }


def interpret_waveforms(brain: InterpreterBrain, wavs: torch.Tensor):
    """One interpretation pass over (B, T) waveforms and their listenable output.

    The one place where a file, a chunk of a file and the arrays of
    :class:`audio_interpretability.api.Interpreter` are interpreted (call it under
    ``torch.no_grad()``).

    Returns
    -------
    spec : Spectrogram
        The front-end output (``X``, ``phase``: (B, frames, bins)), cropped to the mask's frames.
    mask_out : MaskOutput
        The mask (B, frames, bins) and the interpreter's extras.
    wav_int : torch.Tensor
        (B, T) interpretation waveforms at the front-end's rate.
    probs : torch.Tensor
        (B, C) class probabilities (float32, on the CPU).
    """
    wavs = wavs.to(brain.device)
    spec, clf, mask_out = brain.interpret(wavs)
    frontend = brain.hparams.frontend
    wav_int = frontend.invert(torch.expm1(mask_out.mask * spec.X), spec.phase, wavs.shape[1])
    probs = clf.logits.float().softmax(dim=-1).cpu()  # (B, C)
    return spec, mask_out, wav_int, probs


def pool_frames(t: torch.Tensor, pool: int) -> torch.Tensor:
    """(frames, bins) -> (ceil(frames / pool), bins): frames averaged in groups of ``pool``
    (the figure of a long file).

    Example
    -------
    >>> pool_frames(torch.arange(10.0).reshape(5, 2), 2)
    tensor([[1., 2.],
            [5., 6.],
            [8., 9.]])
    """
    if pool <= 1:
        return t.float().cpu()
    return torch.nn.functional.avg_pool1d(t.T[None].float().cpu(), pool, pool, ceil_mode=True)[0].T


def _interpret_whole_file(brain, wav_path, out: Path) -> SingleSampleResult:
    """A file no longer than a chunk: one pass over the whole (peak-normalised) file."""
    from audio_interpretability import viz
    from audio_interpretability.data.audio import read_audio

    frontend = brain.hparams.frontend
    wav = read_audio(wav_path, frontend.sample_rate, normalize=True).unsqueeze(0)  # (1, T)
    spec, mask_out, wav_int, probs = interpret_waveforms(brain, wav)
    probs = probs[0]
    viz.save_wav(out, wav_int[0].float().cpu(), frontend.sample_rate)
    panels = brain.interpretation_panels(spec.X, mask_out.mask, mask_out.extras, 0)
    chunks = [_chunk_record(brain, 0, wav.shape[1], probs)]
    return _single_sample_outputs(brain, wav_path, out, probs, chunks, panels, frontend.hop_samples)


class ChunkInterpretation(NamedTuple):
    """One chunk of a long file (:func:`iter_chunks`)."""

    start: int  # first sample (at the front-end's rate)
    length: int  # samples of the file in this chunk (the last one may be shorter)
    wav_int: torch.Tensor  # (length,) interpretation waveform, CPU
    X: torch.Tensor  # (frames, bins) input log1p spectrogram of the chunk's own frames
    mask: torch.Tensor  # (frames, bins) its mask
    probs: torch.Tensor  # (C,) class probabilities, CPU


def iter_chunks(brain, wav_path, info, peak: float, n_samples: int, chunk: int):
    """Interpret a file chunk by chunk (see :func:`interpret_single_sample`): yields one
    :class:`ChunkInterpretation` per chunk, reading only that chunk (plus a few hops of
    context for the resampling filter). ``info, peak`` are :func:`scan_audio`'s."""
    from tqdm import tqdm

    from audio_interpretability.data.audio import read_audio_segment

    frontend = brain.hparams.frontend
    rate, hop = frontend.sample_rate, frontend.hop_samples
    n_chunks = math.ceil(n_samples / chunk)
    scale = 1.0 / peak if peak > 0 else 1.0  # the whole file's peak (as read_audio normalises)
    margin = min(chunk, 4 * hop)  # context for the resampling filter at chunk edges
    for k in tqdm(
        range(n_chunks), desc=Path(wav_path).name, unit="chunk", disable=brain.noprogressbar
    ):
        start = k * chunk
        length = min(chunk, n_samples - start)
        lead = min(margin, start)
        wav = read_audio_segment(
            wav_path, rate, start - lead, lead + length + margin, info, warn_silent=False
        )  # (<= lead + length + margin,)
        wav = (wav[lead : lead + length] * scale).clamp(-1.0, 1.0)  # (length,)
        wav = torch.nn.functional.pad(wav, (0, chunk - wav.shape[0]))[None]  # (1, chunk)
        spec, mask_out, wav_int, probs = interpret_waveforms(brain, wav)
        mask = mask_out.mask  # (1, frames, bins)
        used = frontend.n_frames(length) if length < chunk else mask.shape[1]
        yield ChunkInterpretation(
            start,
            length,
            wav_int[0, :length].float().cpu(),
            spec.X[0, :used].float().cpu(),
            mask[0, :used].float().cpu(),
            probs[0],
        )


def _interpret_in_chunks(brain, wav_path, out, info, peak, n_samples, chunk):
    """A long file, chunk by chunk (see :func:`interpret_single_sample`)."""
    from audio_interpretability import viz

    frontend = brain.hparams.frontend
    rate, hop = frontend.sample_rate, frontend.hop_samples
    n_chunks = math.ceil(n_samples / chunk)
    frames = frontend.n_frames(chunk)
    # the figure: frames averaged in groups of `pool` (at most FIGURE_COLUMNS columns)
    pool = max(1, math.ceil(n_chunks * frames / FIGURE_COLUMNS))
    mean_probs = torch.zeros(())  # (C,) once the first chunk is in
    chunks: list[dict] = []
    figure_X: list[torch.Tensor] = []
    figure_mask: list[torch.Tensor] = []

    def pieces():
        nonlocal mean_probs
        for c in iter_chunks(brain, wav_path, info, peak, n_samples, chunk):
            mean_probs = mean_probs + c.probs * (c.length / n_samples)
            chunks.append(_chunk_record(brain, c.start, c.start + c.length, c.probs))
            figure_X.append(pool_frames(c.X, pool))
            figure_mask.append(pool_frames(c.mask, pool))
            yield c.wav_int

    viz.save_wav_stream(out, pieces(), rate)
    X = torch.cat(figure_X)[None]  # (1, columns, bins)
    mask = torch.cat(figure_mask)[None]
    panels = InterpreterBrain.interpretation_panels(brain, X, mask, {}, 0)
    return _single_sample_outputs(brain, wav_path, out, mean_probs, chunks, panels, hop * pool)
