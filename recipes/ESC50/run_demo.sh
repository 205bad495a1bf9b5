#!/usr/bin/env bash
# README's first command: the whole story on the embedded synthetic default, in one command.
# Synthetic ESC-50-format data (with ground truth, WHAM!-format noise, LJSpeech-format speech);
# CNN14, FocalNet and ViT classifiers; L-MAC (WHAM!), L2I, PIQ, Saliency, Grad-CAM and AMT
# (FocalNet, ViT) through the real recipe entry points; evaluation in-domain and out-of-domain;
# and the listenable report OUTPUT_FOLDER/report/index.html. Every step and size:
# recipes/ESC50/run_demo.py (its docstring).
# Usage: bash recipes/ESC50/run_demo.sh [OUTPUT_FOLDER] [--size cpu|tiny|paper]
#                                        [--device cuda:0] [--precision bf16] [--force]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python recipes/ESC50/run_demo.py "$@"
