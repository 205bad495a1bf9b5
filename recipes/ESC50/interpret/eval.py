#!/usr/bin/env python3
"""Evaluate any interpreter (AMT, L-MAC, L2I, PIQ) in-domain and out-of-domain, or interpret one file.

The interpreter is the YAML's ``int_method`` (published key: ``lmac``, ``l2i``, ``piq``; ours
also ``amt``), built from that YAML; every interpreter goes through the same evaluation path
(:mod:`audio_interpretability.brains.evaluation`) and writes the same files.

To run::

    # the published protocol (default, eval_protocol: published): one OOD setting on the
    # validation fold, each clip contaminated overlap_multiplier (2) times ...
    python recipes/ESC50/interpret/eval.py hparams/lmac_cnn14.yaml --data_folder D \
        --pretrained_interpreter results/LMAC_cnn14/1234/save/psi_model.ckpt \
        --output_folder results/LMAC_cnn14_eval \
        --overlap_type mixtures|LJSpeech|white_noise|all [--ljspeech_path LJSpeech-1.1]
    # ... or in-domain: the validation fold with WHAM! noise
    ... --add_wham_noise True --wham_folder W
    # our former protocol: the test fold clean, with WHAM! (when --wham_folder is given) and
    # with each asked OOD type, one version per clip
    ... --eval_protocol ours [--wham_folder W] [--overlap_type all --ljspeech_path L]
    # one file (any sample rate / channels): interpretation WAV + PNG + JSON, predicted class;
    # a file longer than single_sample_chunk_s (5 s) is interpreted chunk by chunk
    ... --single_sample clip.wav --single_sample_output out/clip_interpretation.wav

Settings and outputs (``<output_folder>/<setting>/test_metrics.json`` each, interpretations
saved under ``<setting>/interpretations`` when ``save_interpretations``):

=========================  ===============================  ================================
setting                    ``eval_protocol: published``     ``eval_protocol: ours``
=========================  ===============================  ================================
``clean``                  validation fold, only when no    test fold, always
                           other setting is asked
``wham``                   validation fold + WHAM!, when    test fold + WHAM!, when
                           ``--add_wham_noise True``        ``--wham_folder`` is given
``mixtures`` /             validation fold, each clip in    test fold, each clip once
``LJSpeech`` /             ``overlap_multiplier`` versions  (ids unchanged), peak-normalised
``white_noise``            (ids ``<clip>_ov<k>``), L2-      mixing (see
                           normalised mixing                :class:`~audio_interpretability.data.ood.OverlapDataset`)
                           (:class:`~audio_interpretability.data.ood.ContaminatedDataset`)
=========================  ===============================  ================================

WHAM! noise is mixed in the forward pass at ``wham_snr_db`` (0 dB) from split
``wham_test_split`` (default ``null``: ``wham_split``, the training noise, as published;
``tt`` for WHAM!'s test recordings). ``overlap_type`` takes the published names (``speech``
is an alias of ``LJSpeech``; ``all`` = every type; ``none`` = in-domain only). LJSpeech is
never downloaded: ``--ljspeech_path`` must hold ``LJSpeech-1.1`` (checked before any work).
``<output_folder>/eval_metrics.json`` gathers every setting's metrics; the protocol is recorded
in ``<output_folder>/hyperparams.yaml``. The classifier and the decoder are built from the
YAML (same overrides as for training) and loaded from ``embedding_model_path`` /
``classifier_model_path`` and, for trainable interpreters, ``pretrained_interpreter``
(AMT: ``python recipes/ESC50/interpret/eval.py hparams/amt_focalnet.yaml --data_folder D``).

Authors
* audio_interpretability contributors
"""

import json
import logging
import os

# isort: off
import audio_interpretability  # noqa: F401 (first: it sets THP_MEM_ALLOC_ENABLE before torch loads)

# isort: on
import speechbrain as sb

from audio_interpretability.api import build_interpreter, check_interpreter
from audio_interpretability.api import label_encoder_for as _label_encoder
from audio_interpretability.brains.evaluation import evaluate_setting, interpret_single_sample
from audio_interpretability.data.ood import (
    ContaminatedDataset,
    LJSpeechClips,
    OverlapDataset,
    check_eval_protocol,
    overlap_types,
)
from audio_interpretability.data.wham import WhamNoise
from audio_interpretability.recipe_utils import load_recipe, prepare_datasets, wham_test_split

__all__ = ["build_interpreter", "check_interpreter", "evaluation_runs", "main"]

logger = logging.getLogger(__name__)


def evaluation_runs(hparams: dict, datasets: dict, speech: LJSpeechClips | None) -> list:
    """The ``(setting, dataset, add_wham_noise)`` triples ``eval_protocol`` asks for.

    Arguments
    ---------
    hparams : dict
        Reads ``eval_protocol``, ``overlap_type``, ``overlap_multiplier`` (published),
        ``add_wham_noise`` (published), ``wham_folder`` (ours), ``seed`` and
        ``contamination_draws`` (published protocol).
    datasets : dict
        ``{"valid": ..., "test": ...}`` from :func:`prepare_datasets`.
    speech : LJSpeechClips or None
        The LJSpeech files, when ``overlap_type`` asks for LJSpeech.
    """
    types = overlap_types(hparams["overlap_type"])
    seed = hparams["seed"]
    if check_eval_protocol(hparams["eval_protocol"]) == "ours":
        test_set = datasets["test"]
        runs = [("clean", test_set, False)]
        if hparams["wham_folder"]:
            runs.append(("wham", test_set, True))
        for overlap_type in types:
            ood_set = OverlapDataset(test_set, overlap_type, seed=seed, speech=speech)
            runs.append((overlap_type, ood_set, False))
        return runs

    valid_set = datasets["valid"]
    runs = []
    if hparams["add_wham_noise"]:
        runs.append(("wham", valid_set, True))
    pools = {"mixtures": datasets["test"], "LJSpeech": speech, "white_noise": None}
    for overlap_type in types:
        ood_set = ContaminatedDataset(
            valid_set,
            overlap_type,
            contamination=pools[overlap_type],
            multiplier=hparams["overlap_multiplier"],
            seed=seed,
            draws=hparams["contamination_draws"],
        )
        runs.append((overlap_type, ood_set, False))
    return runs or [("clean", valid_set, False)]


def main(argv=None) -> dict:
    """Run the evaluation; ``argv`` defaults to ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``{setting: metrics}``, or for ``--single_sample`` the
        :class:`~audio_interpretability.brains.evaluation.SingleSampleResult` as a dict.
    """
    hparams, run_opts = load_recipe(argv)
    # Fail early (before any data or model work) on a bad interpreter, protocol, type, noise
    # folder or LJSpeech folder.
    brain_class = check_interpreter(hparams)
    protocol = check_eval_protocol(hparams["eval_protocol"])
    types = overlap_types(hparams["overlap_type"])

    if hparams["single_sample"]:
        brain = build_interpreter(brain_class, hparams, run_opts, _label_encoder(hparams))
        result = interpret_single_sample(
            brain,
            hparams["single_sample"],
            hparams["single_sample_output"],
            chunk_seconds=hparams["single_sample_chunk_s"],
        )
        if len(result.chunks) > 1:
            for c in result.chunks:
                print(
                    f"  {c['start_s']:8.2f} s - {c['end_s']:8.2f} s: {c['predicted_class']} "
                    f"(p = {c['probability']:.3f})"
                )
        print(
            f"{hparams['single_sample']}: predicted class {result.predicted_class} "
            f"(index {result.predicted_index}, p = {result.probability:.3f}"
            f"{f', mean over {len(result.chunks)} chunks' if len(result.chunks) > 1 else ''}); "
            f"wrote {result.wav_path}, {result.png_path} and {result.json_path}"
        )
        return result._asdict()

    speech = None
    if "LJSpeech" in types:
        speech = LJSpeechClips(hparams["ljspeech_path"], sample_rate=hparams["sample_rate"])
    datasets = prepare_datasets(hparams)
    runs = evaluation_runs(hparams, datasets, speech)
    logger.info("Evaluation protocol %s: settings %s", protocol, [name for name, _, _ in runs])
    noise = None
    if any(noisy for _, _, noisy in runs):  # built once, before any work
        noise = WhamNoise.from_hparams(hparams, split=wham_test_split(hparams), enabled=True)
    brain = build_interpreter(brain_class, hparams, run_opts, datasets["label_encoder"], noise)

    results = {}
    for name, dataset, noisy in runs:
        results[name] = evaluate_setting(
            brain,
            dataset,
            os.path.join(hparams["output_folder"], name),
            hparams["test_dataloader_options"],
            noise=noise if noisy else None,
        )
    if sb.utils.distributed.if_main_process():  # under torchrun: every process holds them
        path = os.path.join(hparams["output_folder"], "eval_metrics.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    return results


if __name__ == "__main__":
    main()
