#!/usr/bin/env python3
"""Time one batch of the AMT evaluation step, ours and the published one re-implemented.

Ours is exactly what ``InterpreterESC50Brain.evaluate`` does per batch (minus saving files):
STFT front-end, classifier pass with maps, saliency -> resized -> quantile mask, ONE batched
masked-in / masked-out classifier pass, and every metric (accuracy, Fid-In, FF, AI, AD, AG, SPS,
COMP, in_drop).

The published step (SpeechBrain's ``recipes/ESC50/interpret/interpret_amt.py``,
``InterpreterESC50Brain.evaluate_batch``) is re-implemented here (:class:`PublishedAMT`) with
``transformers``' ``FocalNetBackbone`` / ``ViTModel`` (random weights, the configurations of
the published YAMLs), SpeechBrain's ``STFT`` / ``spectral_magnitude`` and ECAPA ``Classifier``
head. Per batch it does four classifier passes of B images and no FF (no masked-out pass):
``compute_forward`` (STFT, log1p magnitude, classifier with maps, quantile threshold to +-inf,
sigmoid), then ``compute_objectives``: STFT again, a pass on the masked-in input (``theta_out``,
for top-1 fidelity), and the faithfulness metric, which recomputes the interpretation (STFT +
classifier pass) and passes it through the classifier once more. Both are timed in the same
process on the same batch, alternating one call of each per iteration, so that the ratio does
not depend on how fast the machine was on another day. The published recipe's fixed per-batch
figures (2.3 s FocalNet-B, 2.4 s ViT-B, batch 2 of 5 s clips on a CPU) are kept as a secondary
column.

Random weights, 50 classes, paper configuration by default (5 s clips at 16 kHz, batch 2,
224 x 224 images); ``--config tiny`` uses tiny models (64 / 32 px images) for tests. A breakdown of
our step into its parts is timed too.

Usage::

    python benchmarks/bench_amt.py results/bench_amt_cpu.json               # CPU, 2 threads
    python benchmarks/bench_amt.py out.json --device cuda --precision bf16  # GPU, autocast
    python benchmarks/bench_amt.py out.json --impls ours                    # ours only

Authors
* audio_interpretability contributors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.ECAPA_TDNN import Classifier as EcapaClassifier
from speechbrain.processing.features import STFT, spectral_magnitude
from speechbrain.processing.NMF import spectral_phase
from speechbrain.utils.Accuracy import Accuracy
from speechbrain.utils.autocast import AMPConfig, TorchAutocast
from speechbrain.utils.metric_stats import MetricStats

from audio_interpretability import metrics as M
from audio_interpretability.brains.amt import InterpreterESC50Brain
from audio_interpretability.models.focalnet import FOCALNET_CONFIGS, FocalNet
from audio_interpretability.models.vit import VIT_CONFIGS, ViT

PUBLISHED_S_PER_BATCH = {"focalnet": 2.3, "vit": 2.4}
IMPLS = ("ours", "published")
MODELS = {
    "focalnet": (
        lambda: FocalNet(**FOCALNET_CONFIGS["base"]),
        {"stages": [-1], "aggregation": "mean"},
        "FocalNet-B (base, 224)",
    ),
    "vit": (
        lambda: ViT(**VIT_CONFIGS["base"]),
        {"layers": [-1], "method": "mean"},
        "ViT-B/16 (224)",
    ),
}
#: ``--config tiny``: small models for tests (saliency options as above); the published side's
#: ``tiny`` configurations below have the same sizes. FocalNet at 64 px: at 32 px its last stage
#: is 1 x 1, a flat map that the published threshold keeps whole.
TINY_MODELS = {
    "focalnet": lambda: FocalNet(**FOCALNET_CONFIGS["tiny-cpu"]),  # 64 px
    "vit": lambda: ViT(**{**VIT_CONFIGS["tiny-cpu"], "img_size": 32}),
}

#: The published recipe's pre-processing and threshold (hparams/amt_focalnet.yaml, amt_vit.yaml).
PUBLISHED_STFT = {"n_fft": 1024, "hop_length": 11.6099, "win_length": 23.2199}
PUBLISHED_SPEC_MAG_POWER = 0.5
PUBLISHED_QUANTILE = 0.9
#: ``transformers`` configurations of the published backbones: microsoft/focalnet-base
#: (``FocalNetBackbone``, FocalNet-B with the small receptive field, output: the last stage,
#: 1024 channels) and google/vit-base-patch16-224 (``ViTModel``, eager attention so that
#: ``output_attentions=True`` returns the maps), and the input size of the published ECAPA
#: ``Classifier`` head (``lin_blocks: 1``) on their pooled embeddings.
PUBLISHED_CONFIGS = {
    "paper": {
        "focalnet": (
            {
                "image_size": 224,
                "patch_size": 4,
                "embed_dim": 128,
                "depths": [2, 2, 18, 2],
                "hidden_sizes": [256, 512, 1024, 1024],
                "focal_levels": [2, 2, 2, 2],
                "focal_windows": [3, 3, 3, 3],
            },
            1024,
        ),
        "vit": (
            {
                "image_size": 224,
                "patch_size": 16,
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
            },
            768,
        ),
    },
    "tiny": {
        "focalnet": (
            {
                "image_size": 64,
                "patch_size": 4,
                "embed_dim": 24,
                "depths": [1, 1, 2, 1],
                "hidden_sizes": [48, 96, 192, 192],
                "focal_levels": [2, 2, 2, 2],
                "focal_windows": [3, 3, 3, 3],
            },
            192,
        ),
        "vit": (
            {
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 64,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "intermediate_size": 256,
            },
            64,
        ),
    },
}


# --------------------------------------------------------------------------------------------
# The published step, re-implemented
# --------------------------------------------------------------------------------------------
def tv_resize(img: torch.Tensor, size) -> torch.Tensor:
    """``torchvision.transforms.functional.resize(img, size)`` on a tensor, without torchvision
    (not installed here): bilinear with ``antialias=True`` (torchvision's default for tensors
    since 0.17) and ``align_corners=False``. As in torchvision, a 3-D tensor is one (C, H, W)
    image, a size equal to the input's returns the input, and a dtype other than float32 /
    float64 (bf16 under autocast) is resized in float32 and cast back."""
    size = [int(v) for v in size]
    if list(img.shape[-2:]) == size:
        return img
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):
        x = x.float()
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = out.to(dtype)
    return out.squeeze(0) if squeeze else out


def build_published_models(model: str, config: str, n_classes: int):
    """(embedding_model, classifier) of the published recipe with random weights."""
    import transformers

    kwargs, embedding_dim = PUBLISHED_CONFIGS[config][model]
    if model == "focalnet":
        embedding_model = transformers.FocalNetBackbone(transformers.FocalNetConfig(**kwargs))
    else:
        vit_config = transformers.ViTConfig(**kwargs)
        vit_config._attn_implementation = "eager"  # the YAML's attn_implementation: eager
        embedding_model = transformers.ViTModel(vit_config)
    classifier = EcapaClassifier(input_size=embedding_dim, out_neurons=n_classes, lin_blocks=1)
    return embedding_model, classifier


class PublishedAMT:
    """The published ``InterpreterESC50Brain``'s evaluation step (``use_mask_output: True``,
    ``save_interpretations: False``), method for method, on the same batch format as ours.

    Per batch: ``compute_forward`` (1 STFT, 1 classifier pass with maps) and
    ``compute_objectives`` (1 STFT, 1 pass on the masked-in input, then the faithfulness
    metric: 1 STFT + 1 pass to recompute the interpretation, 1 pass on it): four classifier
    passes of B images, three STFTs, no masked-out pass (no FF).
    """

    def __init__(self, embedding_model, classifier, sample_rate: int, device: str, precision):
        self.device = torch.device(device)
        self.embedding_model = embedding_model.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval()
        self.compute_stft = STFT(sample_rate=sample_rate, **PUBLISHED_STFT).to(self.device)
        self.quantile = PUBLISHED_QUANTILE
        # what sb.core.Brain wraps evaluate_batch in (--eval_precision), as for ours
        self.evaluation_ctx = TorchAutocast(
            device_type=self.device.type, dtype=AMPConfig.from_name(precision).dtype
        )
        self.on_stage_start()

    def modules(self) -> list[torch.nn.Module]:
        return [self.embedding_model, self.classifier, self.compute_stft]

    def preprocess(self, wavs):
        X_stft = self.compute_stft(wavs)
        X_stft_power = spectral_magnitude(X_stft, power=PUBLISHED_SPEC_MAG_POWER)
        X_stft_logpower = torch.log1p(X_stft_power)
        return X_stft_logpower, X_stft, X_stft_power

    @torch.no_grad()
    def classifier_forward(self, X_stft_logpower):
        """Resize to image_size x image_size, 3 channels, backbone with maps, resize the maps
        back, classifier head, quantile threshold of the last map into -inf / +inf."""
        config = self.embedding_model.config
        net_input = tv_resize(X_stft_logpower, (config.image_size, config.image_size))
        net_input = net_input[:, None, ...].expand(-1, 3, -1, -1)
        if config.model_type == "focalnet":
            captured_modulators = []
            hooks = []
            for encoder_stage in self.embedding_model.focalnet.encoder.stages:
                modulation = encoder_stage.layers[-1].modulation

                def _proj_hook(module, input, output, store=captured_modulators):
                    store.append(output)

                hooks.append(modulation.projection_context.register_forward_hook(_proj_hook))
            hcat = self.embedding_model(net_input).feature_maps[-1]
            embeddings = hcat.mean(dim=(-1, -2))
            for h in hooks:
                h.remove()
            modulators = [x.norm(dim=-3, p=2, keepdim=True) for x in captured_modulators]
            # every stage's map is resized, as published, though only the last one is used
            modulators = [tv_resize(x, X_stft_logpower.shape[-2:]) for x in modulators]
            xhat = modulators[-1]
        elif config.model_type == "vit":
            model_output = self.embedding_model(net_input, output_attentions=True)
            hcat = model_output.last_hidden_state.movedim(-1, -2)
            embeddings = hcat.mean(dim=-1)
            num_heads = config.num_attention_heads
            attentions = [x[:, :, 0, 1:] for x in model_output.attentions]
            num_patches = config.image_size // config.patch_size
            attentions = [x.reshape(-1, num_heads, num_patches, num_patches) for x in attentions]
            attentions = [x.mean(dim=-3, keepdim=True) for x in attentions]
            # every layer's map is resized, as published, though only the last one is used
            attentions = [tv_resize(x, X_stft_logpower.shape[-2:]) for x in attentions]
            xhat = attentions[-1]
        else:
            raise NotImplementedError(config.model_type)

        predictions = self.classifier(embeddings).squeeze(1)
        class_pred = predictions.argmax(1)
        threshold = (
            xhat.reshape(len(xhat), -1)
            .float()
            .quantile(self.quantile, dim=-1)[:, None, None, None]
            .to(xhat.dtype)
        )
        xhat[xhat < threshold] = -float("inf")
        xhat[xhat >= threshold] = float("inf")
        return xhat, predictions, class_pred

    def interpret_computation_steps(self, wavs):
        X_stft_logpower, X_stft, X_stft_power = self.preprocess(wavs)
        X_stft_phase = spectral_phase(X_stft)
        xhat, predictions, class_pred = self.classifier_forward(X_stft_logpower)
        xhat = xhat.squeeze(1)
        Tmax = xhat.shape[1]
        xhat = F.sigmoid(xhat)  # use_mask_output: True
        X_int = xhat * X_stft_logpower[:, :Tmax, :]
        return X_int, X_stft_phase, class_pred, X_stft_logpower, xhat

    def compute_forward(self, batch):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        X_stft_logpower, X_stft, X_stft_power = self.preprocess(wavs)
        xhat, predictions, class_pred = self.classifier_forward(X_stft_logpower)
        xhat = xhat.squeeze(1)
        xhat = F.sigmoid(xhat)
        return predictions, xhat

    def compute_objectives(self, pred, batch):
        predictions, xhat = pred
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        classid, _ = batch.class_string_encoded
        X_stft_logpower, X_stft, X_stft_power = self.preprocess(wavs)
        Tmax = xhat.shape[1]
        _, theta_out, _ = self.classifier_forward(xhat * X_stft_logpower[:, :Tmax, :])
        self.acc_metric.append(batch.id, predict=predictions, target=classid, length=lens)
        self.top_3_fidelity.append([batch.id] * theta_out.shape[0], theta_out, predictions)
        self.faithfulness.append(batch.id, wavs, predictions)
        return torch.as_tensor([0.0], device=self.device)

    def on_stage_start(self) -> None:
        """The published metrics (MetricStats compute them at ``append``)."""

        @torch.no_grad()
        def accuracy_value(predict, target, length):
            nbr_correct, nbr_total = Accuracy(predict.unsqueeze(1), target, length)
            return torch.tensor([nbr_correct / nbr_total])

        @torch.no_grad()
        def compute_fidelity(theta_out, predictions):
            predictions = F.softmax(predictions, dim=1)
            theta_out = F.softmax(theta_out, dim=1)
            pred_cl = torch.argmax(predictions, dim=1)
            k_top = torch.argmax(theta_out, dim=1)
            return (k_top == pred_cl).float()

        @torch.no_grad()
        def compute_faithfulness(wavs, predictions):
            X2 = self.interpret_computation_steps(wavs)[0]
            _, predictions_masked, _ = self.classifier_forward(X2)
            predictions = F.softmax(predictions, dim=1)
            predictions_masked = F.softmax(predictions_masked, dim=1)
            pred_cl = predictions.argmax(dim=1, keepdim=True)
            predictions_selected = torch.gather(predictions, dim=1, index=pred_cl)
            predictions_masked_selected = torch.gather(predictions_masked, dim=1, index=pred_cl)
            return (predictions_selected - predictions_masked_selected).squeeze(1)

        self.top_3_fidelity = MetricStats(metric=compute_fidelity)
        self.faithfulness = MetricStats(metric=compute_faithfulness)
        self.acc_metric = MetricStats(metric=accuracy_value, n_jobs=1)

    def evaluate_batch(self, batch):
        """``sb.core.Brain.evaluate_batch`` under ``evaluate``'s ``torch.no_grad()``."""
        with torch.no_grad(), self.evaluation_ctx:
            out = self.compute_forward(batch)
            loss = self.compute_objectives(out, batch)
        return loss.detach().cpu()

    def summarize(self) -> dict:
        """The published ``on_stage_end`` statistics."""
        return {
            "acc": self.acc_metric.summarize("average"),
            "input_fidelity": self.top_3_fidelity.summarize("average"),
            "faithfulness_median": torch.Tensor(self.faithfulness.scores).median().item(),
            "faithfulness_mean": torch.Tensor(self.faithfulness.scores).mean().item(),
        }


def build_published(model: str, args) -> PublishedAMT:
    embedding_model, classifier = build_published_models(model, args.config, args.n_classes)
    return PublishedAMT(embedding_model, classifier, args.sample_rate, args.device, args.precision)


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------
def build_brain(model: str, args, folder: str) -> InterpreterESC50Brain:
    """AMT brain around a randomly initialised paper-size (or ``--config tiny``) backbone."""
    make_backbone, saliency_options, _ = MODELS[model]
    if getattr(args, "config", "paper") == "tiny":
        make_backbone = TINY_MODELS[model]
    backbone = make_backbone()
    run_opts = {"device": args.device, "precision": args.precision}
    run_opts["eval_precision"] = args.precision
    return InterpreterESC50Brain.from_backbone(
        backbone,
        args.n_classes,
        folder,
        saliency_options=saliency_options,
        random_baseline=args.random_baseline,
        sample_rate=args.sample_rate,
        run_opts=run_opts,
    )


def make_batch(args) -> PaddedBatch:
    """Random peak-normalised clips with labels, like the data pipeline's items."""
    g = torch.Generator().manual_seed(0)
    n = int(args.duration * args.sample_rate)
    items = []
    for i in range(args.batch_size):
        wav = torch.randn(n, generator=g)
        items.append(
            {
                "id": f"clip{i}",
                "sig": wav / wav.abs().max(),
                "class_string_encoded": torch.tensor([i % args.n_classes]),
            }
        )
    return PaddedBatch(items)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(steps: dict, args) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds per call of each evaluation step, alternating the steps
    (one call of each per iteration) so that a machine whose speed drifts slows both alike.

    CPU seconds count all threads; on a shared machine ``cpu / threads`` is what the step would
    take with the threads to itself.
    """
    out = {name: ([], []) for name in steps}
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():
            sync(args.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync(args.device)
            if i >= args.warmup:
                out[name][0].append(time.perf_counter() - start)
                out[name][1].append(time.process_time() - start_cpu)
    return out


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def module_bytes(modules) -> int:
    return sum(
        t.numel() * t.element_size()
        for m in modules
        for t in list(m.parameters()) + list(m.buffers())
    )


def probe(step, backbone: torch.nn.Module, own_bytes: int, args) -> dict:
    """One untimed step: how many classifier (backbone) passes it makes and on how many
    images, and on CUDA its peak memory: its own weights + the most it allocated above what
    was allocated before it (so that the other implementation's weights, also on the device,
    are not counted)."""
    shapes = []

    def record(module, inputs, kwargs):
        image = inputs[0] if inputs else next(iter(kwargs.values()))
        shapes.append(tuple(image.shape))

    hook = backbone.register_forward_pre_hook(record, with_kwargs=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        sync(args.device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    try:
        step()
    finally:
        hook.remove()
    figures = {
        "classifier_passes": len(shapes),
        "classifier_images": sum(shape[0] for shape in shapes),
        "classifier_input_shape": list(shapes[0]) if shapes else None,
    }
    if cuda:
        sync(args.device)
        figures["peak_mem_GiB"] = (torch.cuda.max_memory_allocated() - before + own_bytes) / 2**30
    return figures


@torch.no_grad()
def time_parts(brain: InterpreterESC50Brain, batch, args) -> dict[str, float]:
    """Median seconds of each part of the step, run separately (same order, same shapes)."""
    batch = batch.to(brain.device)
    wavs = batch.sig.data
    labels = batch.class_string_encoded.data.view(-1)
    parts: dict[str, list[float]] = {}

    def timed(name, fn, *fn_args):
        sync(args.device)
        start = time.perf_counter()
        with brain.evaluation_ctx:
            out = fn(*fn_args)
        sync(args.device)
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def metrics(clf, logits, mask):
        values = M.compute_faithfulness_metrics(clf.logits, logits[0], logits[1], mask, labels)
        return {k: v.sum().item() for k, v in values.items()}  # .item(): wait for the device

    for _ in range(max(1, args.iters)):
        spec = timed("front-end (STFT)", brain.preprocess, wavs)
        clf = timed("classifier + maps", brain.classifier_forward, spec.X, True)
        mask = timed("saliency -> mask", brain.make_mask, spec, clf).mask
        logits = timed("masked-in/out pass", brain.masked_passes, spec.X, [mask])
        timed("metrics (incl. FF)", metrics, clf, logits, mask)
    return {k: sorted(v)[len(v) // 2] for k, v in parts.items()}


def flop_figures(step, seconds: float, args) -> dict:
    """Model FLOPs of one evaluation step (``torch.utils.flop_counter``), per clip, the rate
    reached and, with ``--peak_tflops``, its fraction of the device's peak."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    figures = {"flops_per_clip": flops / args.batch_size, "tflops_per_s": flops / seconds / 1e12}
    if args.peak_tflops:
        figures["fraction_of_peak"] = figures["tflops_per_s"] / args.peak_tflops
    return figures


def parse_impls(value: str) -> list[str]:
    impls = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if not impls or unknown:
        raise argparse.ArgumentTypeError(
            f"--impls takes a comma-separated subset of {','.join(IMPLS)}, got {value!r}"
        )
    return [impl for impl in IMPLS if impl in impls]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="JSON file to write the results to")
    parser.add_argument("--models", nargs="+", default=["focalnet", "vit"], choices=list(MODELS))
    parser.add_argument(
        "--impls",
        type=parse_impls,
        default=list(IMPLS),
        help="ours,published (default both): our step and/or the published one re-implemented",
    )
    parser.add_argument(
        "--config",
        default="paper",
        choices=["paper", "tiny"],
        help="paper: FocalNet-B / ViT-B/16 at 224 px; tiny: small models at 64 / 32 px (tests)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0, help="clip length (s)")
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--n_classes", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument(
        "--random_baseline", action="store_true", help="also score the random mask (2 passes)"
    )
    parser.add_argument("--flops", type=int, default=1, help="1: count FLOPs of one step")
    parser.add_argument(
        "--parts", type=int, default=1, help="1: time the parts of our step separately"
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="the device's peak TFLOP/s at this precision (989 for an H100 / H200 in dense "
        "bf16) to report the fraction reached; 0: not reported",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {
        "config": vars(args),
        "host": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": load,
            "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(0)
            if args.device.startswith("cuda")
            else platform.processor() or "cpu",
        },
        "models": {},
    }
    batch = make_batch(args)
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            entry = {"name": MODELS[model][2], "published_s": PUBLISHED_S_PER_BATCH[model]}
            if args.config != "paper":
                entry["name"] += f" [{args.config}]"
            steps, backbones, own_bytes = {}, {}, {}
            if "ours" in args.impls:
                brain = build_brain(model, args, folder)
                brain.on_stage_start(sb.Stage.TEST)
                steps["ours"] = lambda brain=brain: brain.evaluate_batch(batch, sb.Stage.TEST)
                backbones["ours"] = brain.hparams.model.embedding_model
                own_bytes["ours"] = module_bytes([brain.hparams.model, brain.hparams.frontend])
                entry["params_M"] = sum(p.numel() for p in brain.hparams.model.parameters()) / 1e6
            if "published" in args.impls:
                published = build_published(model, args)
                steps["published"] = lambda published=published: published.evaluate_batch(batch)
                backbones["published"] = published.embedding_model
                own_bytes["published"] = module_bytes(published.modules())
                kind = "FocalNetBackbone" if model == "focalnet" else "ViTModel"
                entry["published_reimpl_name"] = f"{entry['name']}, transformers {kind}"
                entry["published_reimpl_params_M"] = (
                    sum(
                        p.numel()
                        for m in (published.embedding_model, published.classifier)
                        for p in m.parameters()
                    )
                    / 1e6
                )
            timings = time_steps(steps, args)
            prefix = {"ours": "", "published": "published_reimpl_"}
            for impl, (wall, cpu) in timings.items():
                p = prefix[impl]
                entry[f"{p}step_s" if impl == "ours" else f"{p}s"] = wall
                entry[f"{p}step_s_median" if impl == "ours" else f"{p}s_median"] = median(wall)
                entry[f"{p}step_cpu_s_median" if impl == "ours" else f"{p}cpu_s_median"] = median(
                    cpu
                )
                entry[f"{p}clips_per_s"] = args.batch_size / median(wall)
                figures = probe(steps[impl], backbones[impl], own_bytes[impl], args)
                for key, value in figures.items():
                    entry[f"{p}{key}"] = value
                if args.flops:
                    for key, value in flop_figures(steps[impl], median(wall), args).items():
                        entry[f"{p}{key}"] = value
            if "ours" in steps:
                brain.metric_accumulator.summarize()  # the metrics were really gathered
                if args.parts:
                    entry["parts_s_median"] = time_parts(brain, batch, args)
                if args.batch_size == 2:  # the fixed figures are per batch of 2
                    speedup = entry["published_s"] / entry["step_s_median"]
                    entry["speedup_vs_published_figure"] = speedup
            if "published" in steps:
                entry["published_reimpl_stats"] = published.summarize()
            if "ours" in steps and "published" in steps:
                entry["speedup_vs_reimpl"] = (
                    entry["published_reimpl_s_median"] / entry["step_s_median"]
                )
            results["models"][model] = entry
            steps.clear()
            brain = published = None
    results["host"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_table(results, args)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.output)
    return results


def print_table(results: dict, args) -> None:
    """Seconds per batch of each implementation and both ratios (same-run re-implementation,
    and the published recipe's fixed figure, which is for batch 2 on a CPU)."""

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"{args.device} {args.precision} batch {args.batch_size} ({args.config})")
    print(
        f"{'model':24s} {'ours s':>8s} {'ours CPU s':>10s} {'re-impl s':>9s} "
        f"{'re-impl CPU s':>13s} {'vs re-impl':>10s} {'fixed fig.':>10s} {'vs fixed':>9s} "
        f"{'passes':>7s} {'TFLOP/s':>8s}"
    )
    for model, entry in results["models"].items():
        rate = f"{entry['tflops_per_s']:8.3f}" if "tflops_per_s" in entry else ""
        if "fraction_of_peak" in entry:
            rate += f" ({100 * entry['fraction_of_peak']:.1f} % of peak)"
        passes = (
            f"{entry.get('classifier_passes', '-')}/"
            f"{entry.get('published_reimpl_classifier_passes', '-')}"
        )
        print(
            f"{model:24s} {fmt(entry.get('step_s_median'), '8.3f')} "
            f"{fmt(entry.get('step_cpu_s_median'), '10.3f')} "
            f"{fmt(entry.get('published_reimpl_s_median'), '9.3f')} "
            f"{fmt(entry.get('published_reimpl_cpu_s_median'), '13.3f')} "
            f"{fmt(entry.get('speedup_vs_reimpl'), '9.2f')}x "
            f"{entry['published_s']:10.1f} "
            f"{fmt(entry.get('speedup_vs_published_figure'), '8.2f')}x {passes:>7s} {rate}"
        )
        for part, seconds in entry.get("parts_s_median", {}).items():
            print(f"    {part:22s} {seconds:8.3f} s")
    print("passes: classifier passes per batch, ours / published re-implementation")
    print(f"load average start/end: {results['host']['loadavg_start']} / "
          f"{results['host']['loadavg_end']}")  # fmt: skip


if __name__ == "__main__":
    main()
