"""Drop-in for SpeechBrain's published ESC-50 interpretability recipes.

* Every key of the published ``lmac_cnn14.yaml``, ``amt_focalnet.yaml`` and ``amt_vit.yaml``
  (SpeechBrain ``recipes/ESC50/interpret/hparams``, held below as lists) is a key of ours.
* The published switches accept their working value and refuse the other with the fix.
* The command lines of the published ``recipes/ESC50/interpret/README.md`` run verbatim from
  ``recipes/ESC50/interpret`` (only the data paths replaced; tiny model sizes, a temporary
  output folder and the classifier checkpoints appended as overrides).

See docs/COMING_FROM_SPEECHBRAIN.md.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import load_script
from hyperpyyaml import load_hyperpyyaml

from audio_interpretability.checkpoints import export_classifier
from audio_interpretability.models.cnn14 import Cnn14
from audio_interpretability.models.heads import LinearHead
from audio_interpretability.recipe_utils import (
    check_published_keys,
    load_recipe,
    wham_split_of,
    wham_test_split,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "recipes" / "ESC50" / "interpret"
TOP_LEVEL_KEY = r"^([A-Za-z_][A-Za-z0-9_]*)\s*:"

# ------------------------------------------------------------------ the published key sets
PUBLISHED_LMAC_CNN14 = [
    "seed", "__set_seed", "data_folder", "audio_data_folder", "single_sample", "int_method",
    "overlap_type", "l_in_w", "l_out_w", "reg_w_tv", "reg_w_l1", "g_w", "crosscor_th", "bin_th",
    "finetuning", "guidelosstype", "crosscortype", "experiment_name", "output_folder",
    "save_folder", "train_log", "wham_folder", "wham_audio_folder", "test_only",
    "save_interpretations", "interpret_period", "use_tensorboard", "tensorboard_logs_folder",
    "train_annotation", "valid_annotation", "test_annotation", "train_fold_nums",
    "valid_fold_nums", "test_fold_nums", "skip_manifest_creation", "ljspeech_path",
    "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr", "sample_rate",
    "use_mask_output", "signal_length_s", "add_wham_noise", "n_mels", "out_n_neurons",
    "shuffle", "dataloader_options", "epoch_counter", "opt_class", "lr_annealing",
    "train_logger", "checkpointer", "return_reps", "embedding_model", "classifier",
    "pretrained_interpreter", "load_pretrained", "use_pretrained", "embedding_model_path",
    "classifier_model_path", "pretrained_esc50", "n_fft", "hop_length", "win_length",
    "use_melspectra_log1p", "use_stft2mel", "compute_stft", "compute_fbank", "compute_istft",
    "psi_model", "modules",
]  # fmt: skip
PUBLISHED_AMT = [  # amt_focalnet.yaml and amt_vit.yaml have the same keys
    "seed", "__set_seed", "data_folder", "audio_data_folder", "experiment_name",
    "output_folder", "save_folder", "train_log", "save_interpretations", "concat_sources",
    "use_tensorboard", "tensorboard_logs_folder", "train_annotation", "valid_annotation",
    "test_annotation", "train_fold_nums", "valid_fold_nums", "test_fold_nums",
    "skip_manifest_creation", "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr",
    "sample_rate", "use_mask_output", "mask_th", "out_n_neurons", "shuffle",
    "dataloader_options", "epoch_counter", "opt_class", "train_logger", "checkpointer",
    "use_pretrained", "embedding_model", "classifier", "embedding_model_path",
    "classifier_model_path", "pretrained_esc50", "quantile", "n_fft", "spec_mag_power",
    "hop_length", "win_length", "compute_stft", "compute_istft", "modules",
]  # fmt: skip
PUBLISHED_L2I_CNN14 = [
    "seed", "__set_seed", "overlap_type", "int_method", "ljspeech_path", "single_sample",
    "pretrained_interpreter", "data_folder", "audio_data_folder", "add_wham_noise",
    "signal_length_s", "wham_folder", "wham_audio_folder", "experiment_name", "output_folder",
    "save_folder", "train_log", "save_interpretations", "classifier_temp", "use_tensorboard",
    "tensorboard_logs_folder", "train_annotation", "valid_annotation", "test_annotation",
    "train_fold_nums", "valid_fold_nums", "test_fold_nums", "skip_manifest_creation",
    "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr", "sample_rate",
    "interpret_period", "relevance_th", "n_mels", "left_frames", "right_frames", "deltas",
    "out_n_neurons", "shuffle", "dataloader_options", "epoch_counter", "opt_class",
    "lr_annealing", "use_melspectra_log1p", "train_logger", "checkpointer", "compute_features",
    "embedding_model", "classifier", "K", "n_freq", "n_fft", "spec_mag_power", "hop_length",
    "win_length", "compute_stft", "compute_fbank", "compute_istft", "psi_model", "theta",
    "nmf_decoder", "alpha", "beta", "modules", "embedding_model_path", "classifier_model_path",
    "nmf_decoder_path", "use_pretrained", "pretrained_esc50",
]  # fmt: skip
PUBLISHED_L2I_CONV2D = [
    "seed", "__set_seed", "data_folder", "audio_data_folder", "int_method", "add_wham_noise",
    "overlap_type", "ljspeech_path", "single_sample", "pretrained_interpreter",
    "experiment_name", "output_folder", "save_folder", "train_log", "wham_folder",
    "wham_audio_folder", "test_only", "save_interpretations", "use_tensorboard",
    "tensorboard_logs_folder", "train_annotation", "valid_annotation", "test_annotation",
    "train_fold_nums", "valid_fold_nums", "test_fold_nums", "skip_manifest_creation",
    "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr", "sample_rate",
    "interpret_period", "relevance_th", "signal_length_s", "use_melspectra_log1p", "n_mels",
    "out_n_neurons", "shuffle", "dataloader_options", "epoch_counter", "opt_class",
    "lr_annealing", "train_logger", "checkpointer", "embedding_model", "classifier_temp",
    "classifier", "K", "n_freq", "n_fft", "spec_mag_power", "hop_length", "win_length",
    "compute_stft", "compute_fbank", "compute_istft", "psi_model", "theta", "nmf_decoder",
    "alpha", "beta", "modules", "embedding_model_path", "classifier_model_path",
    "nmf_decoder_path", "use_pretrained", "pretrained_esc50",
]  # fmt: skip
PUBLISHED_NMF = [
    "seed", "__set_seed", "data_folder", "audio_data_folder", "experiment_name",
    "output_folder", "save_folder", "train_log", "save_period", "save_nmfdictionary",
    "nmf_savepath", "train_annotation", "valid_annotation", "test_annotation",
    "train_fold_nums", "valid_fold_nums", "test_fold_nums", "skip_manifest_creation",
    "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr", "sample_rate",
    "signal_length_s", "shuffle", "dataloader_options", "epoch_counter", "compute_stft",
    "compute_stft_mag", "opt_class", "train_logger", "K", "N_FREQ", "nmf_decoder",
    "nmf_encoder", "modules", "checkpointer",
]  # fmt: skip
PUBLISHED_PIQ = [  # piq.yaml (the Conv2d classifier; piq_cnn14.yaml: ours, on CNN14)
    "seed", "__set_seed", "data_folder", "audio_data_folder", "experiment_name",
    "output_folder", "save_folder", "train_log", "save_interpretations", "interpret_period",
    "use_tensorboard", "tensorboard_logs_folder", "train_annotation", "valid_annotation",
    "test_annotation", "train_fold_nums", "valid_fold_nums", "test_fold_nums",
    "skip_manifest_creation", "ckpt_interval_minutes", "number_of_epochs", "batch_size", "lr",
    "sample_rate", "use_vq", "rec_loss_coef", "use_mask_output", "mask_th",
    "use_melspectra_log1p", "n_mels", "out_n_neurons", "shuffle", "dataloader_options",
    "epoch_counter", "opt_class", "lr_annealing", "train_logger", "checkpointer",
    "use_pretrained", "embedding_model", "classifier", "embedding_model_path",
    "classifier_model_path", "pretrained_esc50", "K", "n_fft", "hop_length", "win_length",
    "compute_stft", "compute_fbank", "compute_istft", "psi_model", "modules",
]  # fmt: skip
#: piq_focalnet.yaml and piq_vit.yaml: piq.yaml's keys less n_mels and compute_fbank
#: (use_melspectra_log1p is False there, as published: the image reads the linear spectrogram).
PUBLISHED_PIQ_IMAGE = [k for k in PUBLISHED_PIQ if k not in ("n_mels", "compute_fbank")]
PUBLISHED = {
    "nmf.yaml": PUBLISHED_NMF,
    "lmac_cnn14.yaml": PUBLISHED_LMAC_CNN14,
    "l2i_cnn14.yaml": PUBLISHED_L2I_CNN14,
    "l2i_conv2d.yaml": PUBLISHED_L2I_CONV2D,
    "amt_focalnet.yaml": PUBLISHED_AMT,
    "amt_vit.yaml": PUBLISHED_AMT,
    # use_melspectra_log1p (published False: the Conv2d classifier reads X) is refused by
    # check_published_keys: left out, as in l2i_conv2d.yaml (docs/PIQ.md)
    "piq.yaml": PUBLISHED_PIQ,
    "piq_cnn14.yaml": PUBLISHED_PIQ,
    "piq_focalnet.yaml": PUBLISHED_PIQ_IMAGE,
    "piq_vit.yaml": PUBLISHED_PIQ_IMAGE,
}
#: SpeechBrain ``Pretrainer`` objects that fetch from the model hub. Nothing is downloaded
#: here: the checkpoints are local paths, under the keys named.
REPLACED = {
    "pretrained_esc50": ["embedding_model_path", "classifier_model_path", "use_pretrained"],
    "load_pretrained": ["pretrained_interpreter"],
}


def our_keys(name: str) -> set:
    return set(re.findall(TOP_LEVEL_KEY, (ROOT / "hparams" / name).read_text(), re.MULTILINE))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_key_is_ours(name):
    ours = our_keys(name)
    missing = [k for k in PUBLISHED[name] if k not in ours and k not in REPLACED]
    assert not missing, f"{name}: published keys missing: {missing}"
    for key, replacements in REPLACED.items():
        if key in PUBLISHED[name]:
            assert key not in ours and set(replacements) <= ours, (key, replacements)


# ------------------------------------------------------------------ published switches
def tiny_lmac(tmp_path, **overrides) -> dict:
    values = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
              "base_channels": 2, "emb_dim": 64, "decoder_width": 16, "out_n_neurons": 5,
              "embedding_model_path": None, "classifier_model_path": None, **overrides}  # fmt: skip
    with open(ROOT / "hparams" / "lmac_cnn14.yaml", encoding="utf-8") as f:
        return load_hyperpyyaml(f, values)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("use_mask_output", False, "--use_mask_output True"),
        ("use_melspectra_log1p", False, "--use_melspectra_log1p True"),
        ("use_stft2mel", False, "--use_stft2mel True"),
        ("return_reps", False, "--return_reps True"),
        ("interpret_period", -1, "interpret_period must be >= 0"),
    ],
)
def test_fixed_switches_refuse_the_other_value(tmp_path, key, value, match):
    check_published_keys(tiny_lmac(tmp_path))  # the defaults pass
    with pytest.raises(ValueError, match=match):
        check_published_keys(tiny_lmac(tmp_path, **{key: value}))


def test_amt_switches(tmp_path):
    def amt(**overrides):
        values = {"data_folder": str(tmp_path), "img_size": 32, "embed_dim": 8,
                  "depths": [1, 1, 1, 1], **overrides}  # fmt: skip
        with open(ROOT / "hparams" / "amt_focalnet.yaml", encoding="utf-8") as f:
            return load_hyperpyyaml(f, values)

    assert amt()["overlap_test_type"] == "mixture"
    assert amt(concat_sources=True)["overlap_test_type"] == "concat"
    check_published_keys(amt(mask_th=0.15, lr=0.1, number_of_epochs=3))
    with pytest.raises(ValueError, match="mask_th must be in"):
        check_published_keys(amt(mask_th=1.5))
    with pytest.raises(ValueError, match="--use_mask_output True"):
        check_published_keys(amt(use_mask_output=False))


def test_use_pretrained_and_hub_paths(tmp_path):
    hub = "speechbrain/focalnet-base-esc50/embedding_model.ckpt"
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        check_published_keys(tiny_lmac(tmp_path, embedding_model_path=hub))
    hparams = tiny_lmac(tmp_path, embedding_model_path=hub, use_pretrained=False)
    check_published_keys(hparams)  # random classifier, as published: nothing loaded
    assert hparams["embedding_model_path"] is None and hparams["classifier_model_path"] is None


def test_wham_audio_folder_names_the_split(tmp_path, tiny_wham):
    parent = str(Path(tiny_wham).parent)
    assert wham_split_of(f"{tiny_wham}/cv", tiny_wham) == "cv"
    assert wham_split_of(f"{parent}/tt", parent) == "tt"  # wham_folder = the parent
    hparams = tiny_lmac(tmp_path, add_wham_noise=True, wham_folder=tiny_wham)
    check_published_keys(hparams)  # published default <wham_folder>/tr
    assert hparams["wham_split"] == "tr"
    hparams = tiny_lmac(
        tmp_path, add_wham_noise=True, wham_folder=tiny_wham, wham_audio_folder=f"{tiny_wham}/cv"
    )
    check_published_keys(hparams)
    assert hparams["wham_split"] == "cv"
    with pytest.raises(ValueError, match="--wham_split"):
        check_published_keys(
            tiny_lmac(
                tmp_path, add_wham_noise=True, wham_folder=tiny_wham, wham_audio_folder=parent
            )
        )


def test_test_noise_is_the_training_split_by_default(tmp_path, tiny_wham):
    """As published, the test noise comes from wham_audio_folder (the training split);
    --wham_test_split tt is the explicit option (docs/DIFFERENCES.md, L7)."""
    hparams = tiny_lmac(tmp_path, add_wham_noise=True, wham_folder=tiny_wham)
    check_published_keys(hparams)
    assert hparams["wham_test_split"] is None and wham_test_split(hparams) == "tr"
    hparams = tiny_lmac(
        tmp_path, add_wham_noise=True, wham_folder=tiny_wham, wham_audio_folder=f"{tiny_wham}/cv"
    )
    check_published_keys(hparams)
    assert wham_test_split(hparams) == "cv"
    hparams = tiny_lmac(tmp_path, add_wham_noise=True, wham_folder=tiny_wham, wham_test_split="tt")
    check_published_keys(hparams)
    assert wham_test_split(hparams) == "tt" and hparams["wham_split"] == "tr"


def test_tensorboard_logs(tmp_path):
    pytest.importorskip("tensorboard")
    args = [str(ROOT / "hparams" / "amt_vit.yaml"), "--data_folder", str(tmp_path),
            "--output_folder", str(tmp_path / "out"), "--use_tensorboard", "True",
            "--img_size", "32", "--patch_size", "8", "--embed_dim", "16", "--depth", "2",
            "--num_heads", "2"]  # fmt: skip
    hparams, _ = load_recipe(args)
    hparams["train_logger"].log_stats(
        {"metrics_folder": "x", "epoch": 1}, test_stats={"FF": 0.5, "AI": 10.0}
    )
    hparams["train_logger"].loggers[1].writer.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "tb_logs"))
    events.Reload()
    assert {"FF/test", "AI/test", "epoch"} <= set(events.Tags()["scalars"])
    assert events.Scalars("FF/test")[0].value == 0.5
    assert "test FF: 5.00e-01" in (tmp_path / "out" / "log.txt").read_text()  # the file too


# ------------------------------------------------------------------ the README command lines
# recipes/ESC50/interpret/README.md of SpeechBrain, verbatim (L-MAC, AMT, NMF, PIQ, L2I,
# evaluation).
README = {
    "lmac": "python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/yourpath/ESC50",
    "lmac_wham": "python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/yourpath/ESC50 "
    "--add_wham_noise True --wham_folder=/yourpath/wham_noise",
    "lmac_finetuning": "python train_lmac.py hparams/lmac_cnn14.yaml "
    "--data_folder=/yourpath/ESC50 --add_wham_noise True --wham_folder=/yourpath/wham_noise "
    "--finetuning True --pretrained_interpreter=/yourLMACcheckpointpath/psi_model.ckpt --g_w 4",
    "amt_focalnet": "python interpret_amt.py hparams/amt_focalnet.yaml "
    "--data_folder /yourpath/ESC50",
    "amt_vit": "python interpret_amt.py hparams/amt_vit.yaml --data_folder /yourpath/ESC50",
    "nmf": "python train_nmf.py hparams/nmf.yaml --data_folder /yourpath/ESC50 --save_period 30",
    "piq": "python train_piq.py hparams/piq.yaml --data_folder=/yourpath/ESC50",
    "l2i_conv2d": "python train_l2i.py hparams/l2i_conv2d.yaml --data_folder /yourpath/ESC50",
    "l2i_cnn14": "python train_l2i.py hparams/l2i_cnn14.yaml --data_folder /yourpath/ESC50",
    "eval_ood": "python eval.py hparams/<config>.yaml --data_folder /yourpath/esc50 "
    "--overlap_type <mixtures/LJSpeech/white_noise> --add_wham_noise False "
    "--pretrained_interpreter yourpath/psi_model.ckpt",
    "eval_id": "python eval.py hparams/<config>.yaml --data_folder /yourpath/esc50 "
    "--add_wham_noise True --wham_folder /yourpath/wham_noise "
    "--pretrained_interpreter yourpath/psi_model.ckpt",
    "eval_single": "python eval.py hparams/<config>.yaml --data_folder /yourpath/esc50 "
    "--add_wham_noise True --wham_folder /yourpath/wham_noise "
    "--pretrained_interpreter yourpath/psi_model.ckpt --single_sample $PATH_TO_WAV",
}
LMAC_TINY = {"base_channels": 2, "emb_dim": 64, "decoder_width": 16, "out_n_neurons": 5,
             "train_fold_nums": "[1]", "batch_size": 5, "number_of_epochs": 1,
             "n_saved_interpretations": 1}  # fmt: skip
AMT_SIZES = {
    "focalnet": {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1]},
    "vit": {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2},
}
COMMON = ["--num_threads", "0", "--device", "cpu", "--noprogressbar"]


def as_args(options: dict) -> list[str]:
    """``{"key": value}`` -> ``["--key", "value", ...]``."""
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


def run_readme(name: str, paths: dict, extra: list[str]):
    """Run README[name] in-process from recipes/ESC50/interpret (cwd set by the caller)."""
    command = README[name]
    for placeholder, value in paths.items():
        command = command.replace(placeholder, value)
    python, script, *argv = shlex.split(command)
    assert python == "python" and (RECIPE_DIR / script).is_file()
    module = load_script(f"readme_{name}", script)
    return module.main(argv + extra + COMMON)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lmac_classifier(ckpt: dict) -> dict:
    return {"embedding_model_path": ckpt["embedding_model"],
            "classifier_model_path": ckpt["classifier"]}  # fmt: skip


@pytest.fixture()
def in_recipe_dir(monkeypatch):
    monkeypatch.chdir(RECIPE_DIR)


def test_readme_lmac_and_eval_commands(tmp_path, tiny_esc50, tiny_wham, in_recipe_dir):
    torch.manual_seed(0)
    ckpt = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), tmp_path / "c")
    out = tmp_path / "results"  # one folder for every command, as the README's defaults
    extra = as_args({**LMAC_TINY, "output_folder": out, **lmac_classifier(ckpt)})
    psi = out / "save" / "psi_model.ckpt"
    paths = {"/yourpath/ESC50": tiny_esc50, "/yourpath/esc50": tiny_esc50,
             "/yourpath/wham_noise": tiny_wham, "/yourLMACcheckpointpath/psi_model.ckpt": str(psi),
             "yourpath/psi_model.ckpt": str(psi), "<config>": "lmac_cnn14",
             "$PATH_TO_WAV": str(next(Path(tiny_esc50, "audio").glob("*.wav")))}  # fmt: skip

    assert run_readme("lmac", paths, extra)["main"]["n_samples"] == 10.0
    assert psi.is_file() and not (out / "valid_interpretations").exists()  # interpret_period 10
    assert set(run_readme("lmac_wham", paths, extra)) == {"main", "clean"}  # resumes: 1 epoch
    tuned = run_readme("lmac_finetuning", paths, extra)
    assert tuned["main"] == read_json(out / "finetuning" / "test_metrics.json")

    for overlap_type in ("mixtures", "LJSpeech", "white_noise"):
        ood = dict(paths, **{"<mixtures/LJSpeech/white_noise>": overlap_type})
        lj = []
        if overlap_type == "LJSpeech":  # the README: "specify the path via ljspeech_path"
            from audio_interpretability.data.ood import generate_speech_like

            folder = tmp_path / "LJSpeech-1.1"
            generate_speech_like(str(folder), n_files=2, duration=1.0, ljspeech_layout=True)
            lj = ["--ljspeech_path", str(folder)]
        results = run_readme("eval_ood", ood, extra + lj)
        assert set(results) == {overlap_type} and results[overlap_type]["n_samples"] == 20.0
    assert set(run_readme("eval_id", paths, extra)) == {"wham"}
    single = run_readme("eval_single", paths, extra)
    assert Path(single["wav_path"]).is_file()


@pytest.mark.parametrize("model", ["focalnet", "vit"])
def test_readme_amt_commands(model, tmp_path, tiny_esc50, in_recipe_dir):
    hparams_file = f"hparams/amt_{model}.yaml"
    with open(hparams_file, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {"data_folder": "unused", "out_n_neurons": 5, **AMT_SIZES[model]})
    pretrained = tmp_path / "pretrained"
    export_classifier(hp["embedding_model"], hp["classifier"], str(pretrained))
    extra = as_args({**AMT_SIZES[model], "out_n_neurons": 5, "batch_size": 5,
                     "n_saved_interpretations": 1, "output_folder": tmp_path / "out",
                     "pretrained_folder": pretrained})  # fmt: skip
    brain = run_readme(f"amt_{model}", {"/yourpath/ESC50": tiny_esc50}, extra)
    assert brain.hparams.overlap_test_type == "mixture"  # concat_sources: False
    assert read_json(tmp_path / "out" / "test_metrics.json")["n_samples"] == 10.0
    assert (tmp_path / "out" / "overlap_metrics.json").is_file()


def test_interpret_period_saves_validation_interpretations(tmp_path, tiny_esc50, in_recipe_dir):
    torch.manual_seed(0)
    ckpt = export_classifier(Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), tmp_path / "c")
    out = tmp_path / "results"
    extra = as_args({**LMAC_TINY, "output_folder": out, "number_of_epochs": 2,
                     "interpret_period": 2, "save_interpretations": True,
                     **lmac_classifier(ckpt)})  # fmt: skip
    run_readme("lmac", {"/yourpath/ESC50": tiny_esc50}, extra)
    (epoch,) = (out / "valid_interpretations").iterdir()  # epoch 2 only (2 % 2 == 0)
    assert epoch.name == "epoch_2"
    (clip,) = epoch.iterdir()  # n_saved_interpretations = 1
    assert (clip / "interpretation.wav").is_file() and (clip / f"{clip.name}.png").is_file()
    assert len(list((out / "interpretations").iterdir())) == 1  # the test clips, as before


def test_readme_nmf_command(tmp_path, tiny_esc50, in_recipe_dir):
    extra = as_args({"sample_rate": 16000, "K": 4, "batch_size": 5, "number_of_epochs": 1,
                     "train_fold_nums": "[1]", "output_folder": tmp_path / "out"})  # fmt: skip
    stats = run_readme("nmf", {"/yourpath/ESC50": tiny_esc50}, extra)
    assert stats == read_json(tmp_path / "out" / "test_metrics.json")
    assert (tmp_path / "out" / "save" / "nmf_decoder.ckpt").is_file()
    assert not (tmp_path / "out" / "nmf_rec").exists()  # save_period 30: no PNG at epoch 1


# The tiny classifiers the PIQ / L2I commands explain, exported as the classification recipe
# does (the Conv2d encoder + ECAPA head of classifier_conv2d.yaml; CNN14 + linear head).
PIQ_TINY = {"emb_dim": 8, "K": 10, "out_n_neurons": 5, "train_fold_nums": "[1]",
            "batch_size": 5, "number_of_epochs": 1, "n_saved_interpretations": 1}  # fmt: skip
L2I_K = 4  # NMF components: the nmf command's K, the dictionary both L2I commands read
L2I_TINY = {
    # theta pools over psi's frames for 1 s clips: 87 (CNN14 psi), 81 (Conv2d PsiOptimized)
    "l2i_cnn14": {"base_channels": 2, "emb_dim": 64, "theta_frames": 87},
    "l2i_conv2d": {"emb_dim": 8, "theta_frames": 81},
}


def conv2d_classifier(folder: Path, dim: int = 8, n_classes: int = 5) -> dict:
    from audio_interpretability.models.conv2d import Conv2dEncoder
    from audio_interpretability.models.heads import CosineHead

    torch.manual_seed(0)
    head = CosineHead(dim, n_classes, scale=1.0, lin_blocks=1)
    return export_classifier(Conv2dEncoder(dim=dim), head, folder)


def test_readme_piq_command(tmp_path, tiny_esc50, in_recipe_dir):
    """piq.yaml is the published Conv2d PIQ: its classifier is read from
    pretrained_classifier_folder (the classifier_conv2d.yaml export) under its file names."""
    pretrained = tmp_path / "pretrained" / "conv2d"
    conv2d_classifier(pretrained)
    out = tmp_path / "piq"
    extra = as_args({**PIQ_TINY, "output_folder": out, "pretrained_classifier_folder": pretrained})
    results = run_readme("piq", {"/yourpath/ESC50": tiny_esc50}, extra)
    assert results["main"] == read_json(out / "test_metrics.json")
    assert results["main"]["n_samples"] == 10.0
    assert (out / "save" / "psi_model.ckpt").is_file()


def test_readme_nmf_then_l2i_commands(tmp_path, tiny_esc50, in_recipe_dir):
    """The README's L2I chain: train_nmf.py, then train_l2i.py on its dictionary, for the Conv2d
    classifier and for CNN14 (the dictionary passed as nmf_decoder_path, the YAMLs' key)."""
    common = {"train_fold_nums": "[1]", "batch_size": 5, "number_of_epochs": 1}
    nmf = tmp_path / "nmf"
    run_readme("nmf", {"/yourpath/ESC50": tiny_esc50},
               as_args({**common, "sample_rate": 16000, "K": L2I_K, "output_folder": nmf}))  # fmt: skip
    dictionary = nmf / "save" / "nmf_decoder.ckpt"
    assert dictionary.is_file()
    torch.manual_seed(0)
    classifiers = {
        "l2i_conv2d": conv2d_classifier(tmp_path / "conv2d"),
        "l2i_cnn14": export_classifier(
            Cnn14(emb_dim=64, base_channels=2), LinearHead(64, 5), tmp_path / "cnn14"
        ),
    }
    for name, sizes in L2I_TINY.items():
        out = tmp_path / name
        extra = as_args({**common, **sizes, "K": L2I_K, "out_n_neurons": 5,
                         "output_folder": out, "nmf_decoder_path": dictionary,
                         "n_saved_interpretations": 1,
                         **lmac_classifier(classifiers[name])})  # fmt: skip
        results = run_readme(name, {"/yourpath/ESC50": tiny_esc50}, extra)
        assert results["main"] == read_json(out / "test_metrics.json")
        assert results["main"]["n_samples"] == 10.0
        assert (out / "save" / "psi_model.ckpt").is_file()


def test_test_only_with_a_value(tmp_path, tiny_esc50):
    """``--test_only True`` (published command lines) is SpeechBrain's flag plus a value: the
    value must not be glued to the previous override, and the YAML key follows the flag."""
    from audio_interpretability.recipe_utils import load_recipe

    base = [str(ROOT / "hparams" / "lmac_cnn14.yaml"), "--data_folder", tiny_esc50]
    base += ["--output_folder", str(tmp_path / "out")]
    for tail, expected in (
        (["--save_interpretations", "False", "--test_only", "True"], True),
        (["--save_interpretations", "False", "--test_only=False"], False),
        (["--save_interpretations", "False", "--test_only"], True),
    ):
        hparams, run_opts = load_recipe(base + tail, create_experiment=False)
        assert hparams["save_interpretations"] is False
        assert hparams["test_only"] is expected and bool(run_opts.get("test_only")) is expected
    with pytest.raises(ValueError, match="--test_only takes True or False"):
        load_recipe(base + ["--test_only=maybe"], create_experiment=False)


def test_fixed_keys_follow_the_yaml_default():
    """use_melspectra_log1p is True for the CNN14 recipes and False (as published) for the
    Conv2d / FocalNet / ViT ones whose classifier reads X: each YAML's own default is the value
    accepted, the other is refused."""
    from audio_interpretability.recipe_utils import check_published_keys, yaml_fixed_defaults

    expected = {"lmac_cnn14.yaml": True, "l2i_cnn14.yaml": True, "l2i_conv2d.yaml": False,
                "piq_focalnet.yaml": False, "piq_vit.yaml": False}  # fmt: skip
    for name, value in expected.items():
        defaults = yaml_fixed_defaults((ROOT / "hparams" / name).read_text(encoding="utf-8"))
        assert defaults["use_melspectra_log1p"] is value, name
        check_published_keys({"use_melspectra_log1p": value}, defaults)
        with pytest.raises(ValueError, match=f"--use_melspectra_log1p {value}"):
            check_published_keys({"use_melspectra_log1p": not value}, defaults)
