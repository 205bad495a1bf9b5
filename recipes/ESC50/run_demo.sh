#!/usr/bin/env bash
# The main job on the embedded synthetic default, end to end on CPU, with the real recipes:
#   1. a 10-class synthetic data set in ESC-50's layout (+ ground-truth stems, WHAM!-format noise)
#   2. a CNN14 classifier trained on it with WHAM! noise (recipes/ESC50/classification/train.py):
#      L-MAC trains with WHAM! noise and must explain a classifier that can hear through it
#   3. L-MAC trained on the frozen CNN14 with WHAM! noise (recipes/ESC50/interpret/train_lmac.py)
#   4. L-MAC evaluated in-domain and out-of-domain (recipes/ESC50/interpret/eval.py)
# Usage: bash recipes/ESC50/run_demo.sh [OUTPUT_FOLDER] [extra overrides for train_lmac.py ...]
# (extra overrides: keys the train_lmac.py call below does not set already)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-results/demo}
shift || true
DATA=$OUT/synth10
WHAM=$OUT/wham_noise
CLF=$OUT/pretrained/cnn14
# CPU-sized models and training (the YAML defaults are the paper configuration, for a GPU)
CNN14_CPU=(--base_channels 8 --emb_dim 256)
LMAC_CPU=("${CNN14_CPU[@]}" --decoder_width 64)

python recipes/ESC50/prepare_synthetic.py --output_folder "$DATA" --n_classes 10 \
    --clips_per_class_per_fold 8 --duration 2 --sample_rate 44100 --seed 0 --wham_folder "$WHAM"

# speech-like clips in the LJSpeech-1.1 layout (metadata.csv + wavs/) for the LJSpeech
# out-of-domain setting (the paper used LJSpeech itself)
python -c "import sys; from audio_interpretability.data.ood import generate_speech_like; \
generate_speech_like(sys.argv[1], n_files=8, duration=3.0, sample_rate=22050, ljspeech_layout=True)" \
    "$OUT/LJSpeech-1.1"

python recipes/ESC50/classification/train.py hparams/classifier_cnn14.yaml --data_folder "$DATA" \
    --out_n_neurons 10 --output_folder "$OUT/classifier_cnn14" --pretrained_folder "$CLF" \
    --cache_folder "$OUT/audio_cache" "${CNN14_CPU[@]}" --number_of_epochs 10 --batch_size 16 \
    --lr 0.001 --augment_prob 0.5 --lr_schedule plateau --add_wham_noise True --wham_folder "$WHAM"

python recipes/ESC50/interpret/train_lmac.py hparams/lmac_cnn14.yaml --data_folder "$DATA" \
    --out_n_neurons 10 --pretrained_classifier_folder "$CLF" --output_folder "$OUT/lmac" \
    --cache_folder "$OUT/audio_cache" --add_wham_noise True --wham_folder "$WHAM" \
    --number_of_epochs 10 --batch_size 8 --lr 0.005 "${LMAC_CPU[@]}" "$@"

# the published evaluation protocol (eval_protocol: published): the validation fold with WHAM!
# noise (in-domain), and each of its clips in 2 versions per out-of-domain type
python recipes/ESC50/interpret/eval.py hparams/lmac_cnn14.yaml --data_folder "$DATA" \
    --out_n_neurons 10 --pretrained_classifier_folder "$CLF" --output_folder "$OUT/lmac_eval" \
    --cache_folder "$OUT/audio_cache" --add_wham_noise True --wham_folder "$WHAM" \
    --pretrained_interpreter "$OUT/lmac/save/psi_model.ckpt" --overlap_type all \
    --ljspeech_path "$OUT/LJSpeech-1.1" "${LMAC_CPU[@]}"

# one file, any sample rate / channel count: interpretation WAV + PNG
python recipes/ESC50/interpret/eval.py hparams/lmac_cnn14.yaml --data_folder "$DATA" \
    --out_n_neurons 10 --pretrained_classifier_folder "$CLF" --output_folder "$OUT/lmac_eval" \
    --pretrained_interpreter "$OUT/lmac/save/psi_model.ckpt" \
    --single_sample "$(ls "$DATA"/audio/5-*.wav | head -n 1)" "${LMAC_CPU[@]}"

echo "Done: metrics in $OUT/lmac/test_metrics.json (WHAM! 0 dB), $OUT/lmac/clean/test_metrics.json"
echo "and $OUT/lmac_eval/{wham,mixtures,LJSpeech,white_noise}/test_metrics.json (validation fold);"
echo "listenable interpretations in $OUT/lmac/interpretations/ and $OUT/lmac_eval/*/interpretations/"

# a listenable HTML report of everything above (metric tables, figures, audio players)
python -m audio_interpretability.report "$OUT"
echo "Report: $OUT/report/index.html (open it in a browser; summary.md beside it)"
