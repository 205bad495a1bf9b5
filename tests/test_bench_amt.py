"""benchmarks/bench_amt.py: the published AMT step re-implemented with transformers' FocalNet /
ViT (four classifier passes per batch, the quantile mask, no FF), timed in the same run as ours,
and benchmarks/perf_table.py's rows for it. Tiny models (64 / 32 px images), 1 s clips."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from helpers import load_script

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    module = load_script(f"_{name}", ROOT / "benchmarks" / f"{name}.py")
    return module


bench = _load("bench_amt")
perf_table = _load("perf_table")


def _tiny_args(device, **overrides) -> argparse.Namespace:
    values = dict(
        config="tiny",
        n_classes=5,
        sample_rate=16000,
        device=str(device),
        precision="fp32",
        batch_size=3,
        duration=1.0,
    )
    return argparse.Namespace(**{**values, **overrides})


@pytest.mark.parametrize("model", ["focalnet", "vit"])
def test_published_step_makes_four_classifier_passes(model, device):
    args = _tiny_args(device)
    published = bench.build_published(model, args)
    assert published.embedding_model.config.model_type == model
    images, heads = [], []
    published.embedding_model.register_forward_pre_hook(
        lambda module, inputs: images.append(tuple(inputs[0].shape))
    )
    published.classifier.register_forward_hook(
        lambda module, inputs, output: heads.append(tuple(output.shape))
    )
    batch = bench.make_batch(args)
    loss = published.evaluate_batch(batch)

    # compute_forward, theta_out, the faithfulness metric's interpretation and its pass
    size = {"focalnet": 64, "vit": 32}[model]
    assert images == [(3, 3, size, size)] * 4
    assert heads == [(3, 1, 5)] * 4
    assert loss.item() == 0.0
    stats = published.summarize()
    assert set(stats) == {"acc", "input_fidelity", "faithfulness_median", "faithfulness_mean"}
    # one score per clip for each published metric
    assert len(published.faithfulness.scores) == 3
    assert len(published.top_3_fidelity.scores) == 3


@pytest.mark.parametrize("model", ["focalnet", "vit"])
def test_published_mask_keeps_one_minus_quantile(model, device):
    args = _tiny_args(device)
    published = bench.build_published(model, args)
    wavs = torch.randn(3, 16000, generator=torch.Generator().manual_seed(1)).to(device)
    X = published.preprocess(wavs)[0]
    assert X.shape == (3, 87, 513)  # the published STFT: 186-sample hop, n_fft 1024
    xhat, predictions, class_pred = published.classifier_forward(X)

    assert xhat.shape == (3, 1, 87, 513)
    assert predictions.shape == (3, 5) and class_pred.shape == (3,)
    assert bool(torch.isinf(xhat).all())  # -inf below the quantile, +inf at or above it
    kept = (xhat == float("inf")).float().mean(dim=(1, 2, 3))
    assert torch.allclose(kept, torch.full_like(kept, 1 - bench.PUBLISHED_QUANTILE), atol=0.01)
    # sigmoid(+-inf) is the 0 / 1 mask the interpretation is made of
    X_int = published.interpret_computation_steps(wavs)[0]
    assert bool(((X_int == 0) | (X_int == X)).all())
    kept_bins = (X_int != 0).float().mean(dim=(1, 2))
    assert torch.allclose(kept_bins, kept, atol=0.01)


def test_tv_resize_is_antialiased_bilinear_and_keeps_dtype():
    x = torch.zeros(2, 8, 8)
    x[:, ::2] = 1.0  # stripes: an antialiased downsampling averages them, plain bilinear not
    out = bench.tv_resize(x, (4, 4))
    assert out.shape == (2, 4, 4)
    plain = torch.nn.functional.interpolate(x[None], size=(4, 4), mode="bilinear")[0]
    assert not torch.allclose(out, plain)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.15)
    assert bench.tv_resize(x, (8, 8)) is x
    assert bench.tv_resize(x.bfloat16(), (4, 4)).dtype == torch.bfloat16


def test_main_writes_both_implementations_and_perf_table_rows(tmp_path, device):
    out = tmp_path / "amt.json"
    argv = [str(out), "--config", "tiny", "--device", str(device), "--duration", "1"]
    argv += ["--n_classes", "5", "--warmup", "0", "--iters", "1", "--threads", "1"]
    argv += ["--parts", "0", "--models", "focalnet"]
    bench.main(argv)
    data = json.loads(out.read_text())
    entry = data["models"]["focalnet"]

    assert data["config"]["impls"] == ["ours", "published"]
    assert entry["step_s_median"] > 0 and entry["published_reimpl_s_median"] > 0
    assert entry["speedup_vs_reimpl"] == pytest.approx(
        entry["published_reimpl_s_median"] / entry["step_s_median"]
    )
    assert entry["published_s"] == 2.3  # the fixed figure stays, as a secondary column
    assert entry["published_reimpl_classifier_passes"] == 4
    assert entry["published_reimpl_classifier_images"] == 4 * 2
    assert entry["published_reimpl_classifier_input_shape"] == [2, 3, 64, 64]
    assert entry["classifier_passes"] == 2  # ours: maps pass + one batched masked-in/out pass
    assert entry["published_reimpl_flops_per_clip"] > 0 and entry["flops_per_clip"] > 0

    table = perf_table.table(tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| AMT")]
    assert len(rows) == 2
    ours = next(r for r in rows if "(ours)" in r).split(" | ")
    reimpl = next(r for r in rows if "(published re-impl.)" in r).split(" | ")
    assert ours[9] == f"{entry['speedup_vs_reimpl']:.2f}x"  # speed-up: the same-run ratio
    assert reimpl[3] == f"{entry['published_reimpl_s_median']:.3f}"
    assert reimpl[9] == ""

    # --readme / --block: the same table replaces the README's block, the rest is kept
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:perf -->\nold\n<!-- /table:perf -->\nend\n")
    perf_table.main([str(tmp_path), "--readme", str(readme), "--block", "perf"])
    assert readme.read_text() == (
        f"intro\n<!-- table:perf -->\n{table}\n<!-- /table:perf -->\nend\n"
    )


def test_impls_flag_runs_one_implementation(tmp_path, device):
    out = tmp_path / "amt.json"
    argv = [str(out), "--config", "tiny", "--device", str(device), "--duration", "1"]
    argv += ["--n_classes", "5", "--warmup", "0", "--iters", "1", "--threads", "1"]
    argv += ["--flops", "0", "--models", "vit", "--impls", "published"]
    entry = bench.main(argv)["models"]["vit"]
    assert "step_s_median" not in entry and "speedup_vs_reimpl" not in entry
    assert entry["published_reimpl_classifier_passes"] == 4
    rows = [line for line in perf_table.table(tmp_path).splitlines() if "| AMT" in line]
    assert len(rows) == 1 and "(published re-impl.)" in rows[0]
    with pytest.raises(SystemExit):
        bench.main([str(out), "--impls", "ours,nope"])
