"""SpeechBrain's released ESC-50 checkpoints load strictly into our models, same outputs.

Each reference is built from its own library (SpeechBrain's ``Cnn14`` + ``torch.nn.Linear``,
its ECAPA ``Classifier``, ``transformers``' ``FocalNetBackbone`` / ``ViTModel``) at a tiny size
with random weights (nothing is downloaded), its state dicts are saved as the published
``embedding_model.ckpt`` / ``classifier.ckpt``, loaded through our YAML keys
(``embedding_model_path`` / ``classifier_model_path`` and :func:`load_classifier`), and the
outputs are compared: embeddings, logits, and the maps AMT thresholds.
"""

from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.Cnn14 import Cnn14 as ReferenceCnn14
from speechbrain.lobes.models.Cnn14 import CNN14PSI_stft
from speechbrain.lobes.models.Cnn14 import ConvBlock as ReferenceConvBlock
from speechbrain.lobes.models.ECAPA_TDNN import Classifier as EcapaClassifier

from audio_interpretability.checkpoints import load_classifier
from audio_interpretability.models import CosineHead, FocalNet, LinearHead, ViT

try:
    import transformers
except ImportError:  # requirements-dev.txt installs it; the CNN14 tests do not need it
    transformers = None
needs_transformers = pytest.mark.skipif(
    transformers is None, reason="transformers (requirements-dev.txt) is not installed"
)

N_CLASSES = 5
HPARAMS = Path(__file__).resolve().parents[1] / "hparams"


def _randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Seeded random values in every floating tensor (weights, BatchNorm statistics too), so
    that no parameter keeps a default (ones, zeros) that would hide a wrong mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.rand(tensor.shape, generator=generator)
            tensor.copy_(0.5 + values if name.endswith("running_var") else values - 0.5)
    return module.eval()


def _save_published(tmp_path, backbone, head) -> dict:
    """Write the two state dicts as the published recipes' checkpointer does."""
    paths = {
        "embedding_model_path": str(tmp_path / "embedding_model.ckpt"),
        "classifier_model_path": str(tmp_path / "classifier.ckpt"),
    }
    torch.save(backbone.state_dict(), paths["embedding_model_path"])
    torch.save(head.state_dict(), paths["classifier_model_path"])
    return paths


def _load_yaml(name: str, overrides: dict):
    with open(HPARAMS / name, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)


def _load(hparams) -> torch.nn.Module:
    """What the interpretation recipes do with the YAML keys (InterpreterBrain)."""
    model = hparams["model"]
    load_classifier(
        model.embedding_model,
        model.classifier,
        hparams["embedding_model_path"],
        hparams["classifier_model_path"],
    )
    return model.eval()


def _load_recipe(name: str, args: list, paths: dict, tmp_path):
    """Parse a command line as the recipes do (``hparams/<name> --key value ...``) and load
    the published files: AMT through its ``embedding_model_path`` / ``classifier_model_path``
    keys, the classification YAML (which has none) through :func:`load_classifier`."""
    from audio_interpretability.recipe_utils import load_recipe

    argv = [str(HPARAMS / name), "--data_folder", str(tmp_path), "--output_folder",
            str(tmp_path / "out"), "--out_n_neurons", str(N_CLASSES), "--num_threads", "0",
            *args]  # fmt: skip
    if name.startswith("amt_"):
        argv += ["--embedding_model_path", paths["embedding_model_path"],
                 "--classifier_model_path", paths["classifier_model_path"]]  # fmt: skip
    hparams, _ = load_recipe(argv, create_experiment=False)
    if name.startswith("amt_"):
        return hparams, _load(hparams)
    model = hparams["model"]
    load_classifier(model.embedding_model, model.classifier, **paths)
    return hparams, model.eval()


def _close(mine, theirs):
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- CNN14
def test_cnn14_linear_head_and_lmac_decoder_load_through_the_lmac_yaml(tmp_path):
    from audio_interpretability.brains.lmac import LMAC

    base, emb_dim = 4, 128  # the L-MAC decoder needs emb_dim == 32 * base_channels
    with torch.device("meta"):  # SpeechBrain's Cnn14 has the published widths only
        reference = ReferenceCnn14(80, emb_dim, return_reps=True)
    reference.norm0 = torch.nn.BatchNorm2d(80)
    widths = (1, base, 2 * base, 4 * base, 8 * base, 16 * base, emb_dim)
    for i in range(6):  # its own ConvBlocks at a tiny width
        setattr(reference, f"conv_block{i + 1}", ReferenceConvBlock(widths[i], widths[i + 1], "bn"))
    reference = _randomise(reference)
    linear = _randomise(torch.nn.Linear(emb_dim, N_CLASSES), seed=2)
    psi = _randomise(CNN14PSI_stft(dim=emb_dim, outdim=1), seed=3)
    paths = _save_published(tmp_path, reference, linear)
    paths["pretrained_interpreter"] = str(tmp_path / "psi_model.ckpt")
    torch.save(psi.state_dict(), paths["pretrained_interpreter"])

    hparams = _load_yaml(
        "lmac_cnn14.yaml",
        {
            **paths,
            "base_channels": base,
            "emb_dim": emb_dim,
            "out_n_neurons": N_CLASSES,
            "decoder_width": None,  # the published full-width decoder
            # ConvTranspose2d as published, for a 1e-5 match (the matrix-product layers sum in
            # another order: tests/test_decoders.py::test_gemm_conv_is_the_same_function)
            "decoder_gemm_conv": False,
            # convt8 and convt9 one after the other, as published (merged, they sum in another
            # order too: tests/test_decoders.py::test_fused_tail_is_the_same_function)
            "decoder_fuse_tail": False,
            "data_folder": str(tmp_path),
            "output_folder": str(tmp_path / "out"),
            "num_threads": 0,
        },
    )
    LMAC(  # loads the three checkpoints, as train_lmac.py / eval.py do
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    model = hparams["model"]
    x = torch.randn(2, 40, 80)  # (B, frames, mel); T % 32 in 8..15 suits the published decoder
    with torch.no_grad():
        out = model.embedding_model(x, return_maps=True)
        reference_embedding, reference_maps = reference(x)
        reference_embedding = reference_embedding[:, 0]  # (B, 1, D) -> (B, D)
        _close(out.embedding, reference_embedding)
        _close(model.classifier(out.embedding), linear(reference_embedding))
        _close(hparams["psi_model"](out.maps), psi(reference_maps))


def test_linear_head_keeps_loading_our_own_layout():
    ours, again = LinearHead(8, 3), LinearHead(8, 3)
    again.load_state_dict(again.convert_published_state_dict(ours.state_dict()), strict=True)
    assert torch.equal(again.w.weight, ours.w.weight)


# ----------------------------------------------------------------------------- FocalNet
def _tiny_focalnet_config():
    return transformers.FocalNetConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 2, 1], focal_levels=[2] * 4
    )


@needs_transformers
@pytest.mark.parametrize("in_chans", [1, 3])
def test_focalnet_backbone_and_ecapa_head(tmp_path, in_chans):
    reference = _randomise(transformers.FocalNetBackbone(_tiny_focalnet_config()))
    head = _randomise(EcapaClassifier(input_size=64, lin_blocks=1, out_neurons=N_CLASSES), 2)
    paths = _save_published(tmp_path, reference, head)

    ours = FocalNet(
        img_size=32,
        patch_size=4,
        in_chans=in_chans,
        embed_dim=8,
        depths=(1, 1, 2, 1),
        final_norm=False,  # the published recipe pools the last stage before the final norm
    )
    our_head = CosineHead(64, N_CLASSES, scale=1.0, lin_blocks=1)  # scale 1: raw cosines
    load_classifier(ours, our_head, paths["embedding_model_path"], paths["classifier_model_path"])
    ours.eval(), our_head.eval()

    image = torch.randn(2, 1, 32, 32)  # the resized spectrogram, height = time
    modulators = []  # what the published AMT captures: a hook on each stage's last h
    hooks = [
        stage.layers[-1].modulation.projection_context.register_forward_hook(
            lambda module, args, output: modulators.append(output)
        )
        for stage in reference.focalnet.encoder.stages
    ]
    with torch.no_grad():
        features = reference(image.expand(-1, 3, -1, -1)).feature_maps[-1]
        reference_embedding = features.mean(dim=(-1, -2))
        reference_logits = head(reference_embedding).squeeze(1)
        out = ours(image.expand(-1, in_chans, -1, -1), return_maps=True)
        logits = our_head(out.embedding)
    for hook in hooks:
        hook.remove()
    _close(out.embedding, reference_embedding)
    _close(logits, reference_logits)
    assert len(out.maps) == len(modulators) == 4
    for mine, theirs in zip(out.maps, modulators):
        _close(mine, theirs)
        _close(mine.norm(dim=1), theirs.norm(dim=-3))  # the channel norm AMT thresholds


@needs_transformers
def test_published_focalnet_refuses_a_model_that_pools_the_final_norm(tmp_path):
    reference = transformers.FocalNetBackbone(_tiny_focalnet_config())
    paths = _save_published(tmp_path, reference, CosineHead(64, N_CLASSES))
    ours = FocalNet(img_size=32, patch_size=4, embed_dim=8, depths=(1, 1, 2, 1))
    with pytest.raises(ValueError, match="final_norm: False"):
        load_classifier(
            ours,
            CosineHead(64, N_CLASSES),
            paths["embedding_model_path"],
            paths["classifier_model_path"],
        )


@needs_transformers
@pytest.mark.parametrize("name", ["amt_focalnet.yaml", "classifier_focalnet.yaml"])
def test_focalnet_loads_through_the_yaml_defaults(tmp_path, name):
    reference = _randomise(transformers.FocalNetBackbone(_tiny_focalnet_config()))
    head = _randomise(EcapaClassifier(input_size=64, lin_blocks=1, out_neurons=N_CLASSES), 2)
    paths = _save_published(tmp_path, reference, head)
    hparams, model = _load_recipe(
        name,
        # the YAML defaults are the published architecture (final_norm False, one head
        # block: docs/DIFFERENCES.md C5, C7); tiny sizes
        ["--img_size", "32", "--patch_size", "4", "--embed_dim", "8"]
        + ["--depths", "[1, 1, 2, 1]"],
        paths,
        tmp_path,
    )
    assert hparams["final_norm"] is False and hparams["cosine_lin_blocks"] == 1
    image = torch.randn(2, 1, 32, 32)
    modulators = []
    hooks = [
        stage.layers[-1].modulation.projection_context.register_forward_hook(
            lambda module, args, output: modulators.append(output)
        )
        for stage in reference.focalnet.encoder.stages
    ]
    with torch.no_grad():
        features = reference(image.expand(-1, 3, -1, -1)).feature_maps[-1]
        reference_embedding = features.mean(dim=(-1, -2))
        reference_cosines = head(reference_embedding).squeeze(1)
        out = model.embedding_model(image, return_maps=True)
        logits = model.classifier(out.embedding)
    for hook in hooks:
        hook.remove()
    _close(out.embedding, reference_embedding)
    _close(logits, hparams["cosine_scale"] * reference_cosines)
    for mine, theirs in zip(out.maps, modulators, strict=True):
        _close(mine, theirs)


def test_ecapa_head_with_other_lin_blocks_names_the_fix(tmp_path):
    torch.save(
        EcapaClassifier(input_size=16, lin_blocks=1, out_neurons=3).state_dict(),
        tmp_path / "classifier.ckpt",
    )
    emb = torch.nn.Linear(2, 2)
    torch.save(emb.state_dict(), tmp_path / "embedding_model.ckpt")
    with pytest.raises(ValueError, match="lin_blocks: 1"):
        load_classifier(
            emb,
            CosineHead(16, 3),
            str(tmp_path / "embedding_model.ckpt"),
            str(tmp_path / "classifier.ckpt"),
        )


# ---------------------------------------------------------------------------------- ViT
def _tiny_vit():
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation="eager",  # as the published AMT recipe: attentions are returned
    )
    return transformers.ViTModel(config)


@needs_transformers
@pytest.mark.parametrize("in_chans", [1, 3])
def test_vit_model_and_ecapa_head(tmp_path, in_chans):
    reference = _randomise(_tiny_vit())
    head = _randomise(EcapaClassifier(input_size=32, lin_blocks=1, out_neurons=N_CLASSES), 2)
    paths = _save_published(tmp_path, reference, head)

    ours = ViT(
        img_size=32,
        patch_size=8,
        in_chans=in_chans,
        embed_dim=32,
        depth=2,
        num_heads=4,
        layer_norm_eps=1e-12,
    )
    our_head = CosineHead(32, N_CLASSES, scale=1.0, lin_blocks=1)
    load_classifier(ours, our_head, paths["embedding_model_path"], paths["classifier_model_path"])
    ours.eval(), our_head.eval()

    image = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        reference_out = reference(image.expand(-1, 3, -1, -1), output_attentions=True)
        reference_embedding = reference_out.last_hidden_state.mean(dim=1)
        reference_logits = head(reference_embedding).squeeze(1)
        out = ours(image.expand(-1, in_chans, -1, -1), return_maps=True)
        logits = our_head(out.embedding)
    _close(out.embedding, reference_embedding)
    _close(logits, reference_logits)
    # The pooler is loaded too (not dropped): the same pooler_output as ViTModel.
    with torch.no_grad():
        _close(
            ours.pool(ours.tokens(image.expand(-1, in_chans, -1, -1))[0]),
            reference_out.pooler_output,
        )
    assert len(out.maps) == len(reference_out.attentions) == 2
    for mine, theirs in zip(out.maps, reference_out.attentions):
        _close(mine, theirs)
    # The map the published AMT thresholds: CLS-to-patch attention of the last layer, mean
    # over heads, on the patch grid.
    grid = reference_out.attentions[-1][:, :, 0, 1:].reshape(2, 4, 4, 4).mean(dim=1)
    _close(ours.saliency(out.maps, layers=(-1,), method="mean"), grid)


@needs_transformers
@pytest.mark.parametrize("name", ["amt_vit.yaml", "classifier_vit.yaml"])
def test_vit_loads_through_the_yaml_defaults(tmp_path, name):
    reference = _randomise(_tiny_vit())
    head = _randomise(EcapaClassifier(input_size=32, lin_blocks=1, out_neurons=N_CLASSES), 2)
    paths = _save_published(tmp_path, reference, head)
    hparams, model = _load_recipe(
        name,
        # the YAML defaults are the published architecture (layer_norm_eps 1e-12, one head
        # block: docs/DIFFERENCES.md C6, C7); tiny sizes
        ["--img_size", "32", "--patch_size", "8", "--embed_dim", "32", "--depth", "2"]
        + ["--num_heads", "4"],
        paths,
        tmp_path,
    )
    assert hparams["layer_norm_eps"] == 1e-12 and hparams["cosine_lin_blocks"] == 1
    image = torch.randn(2, 1, 32, 32)  # in_chans 1: the 3-channel patch embedding is summed
    with torch.no_grad():
        reference_out = reference(image.expand(-1, 3, -1, -1), output_attentions=True)
        reference_embedding = reference_out.last_hidden_state.mean(dim=1)
        reference_cosines = head(reference_embedding).squeeze(1)
        out = model.embedding_model(image, return_maps=True)
        logits = model.classifier(out.embedding)
    _close(out.embedding, reference_embedding)
    _close(logits, hparams["cosine_scale"] * reference_cosines)
    for mine, theirs in zip(out.maps, reference_out.attentions, strict=True):
        _close(mine, theirs)


@needs_transformers
def test_vit_yaml_with_our_options_loads_the_published_layout_only_approximately(tmp_path):
    """With our options (--layer_norm_eps 1e-6 --cosine_lin_blocks 0) the published backbone
    loads: close, not equal."""
    reference = _randomise(_tiny_vit())
    head = _randomise(EcapaClassifier(input_size=32, lin_blocks=0, out_neurons=N_CLASSES), 2)
    paths = _save_published(tmp_path, reference, head)
    hparams = _load_yaml(
        "amt_vit.yaml",
        {
            **paths,
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "layer_norm_eps": 1e-6,
            "cosine_lin_blocks": 0,
            "out_n_neurons": N_CLASSES,
            "data_folder": str(tmp_path),
            "output_folder": str(tmp_path / "out"),
        },
    )
    model = _load(hparams)
    image = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = reference(image.expand(-1, 3, -1, -1)).last_hidden_state.mean(dim=1)
        embedding = model.embedding_model(image).embedding
    torch.testing.assert_close(embedding, expected, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------- paper sizes
@needs_transformers
def test_paper_size_backbones_have_the_published_parameter_counts():
    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):  # shapes only: no weight initialisation
        focalnet = FocalNet.from_config("base", in_chans=3)
        hf_focalnet = transformers.FocalNetBackbone(
            transformers.FocalNetConfig(embed_dim=128, depths=[2, 2, 18, 2])
        )
        vit = ViT.from_config("base", in_chans=3)
        hf_vit = transformers.ViTModel(transformers.ViTConfig())
        focalnet_1ch = FocalNet.from_config("base", in_chans=1)
    assert count(focalnet) == count(hf_focalnet) == 87_123_144  # 87.1 M
    assert count(vit) == count(hf_vit) == 86_389_248  # 86.4 M, pooler included
    assert count(vit.pooler) == 768 * 768 + 768
    # Our 1-channel default differs only in the stem / patch embedding.
    assert count(focalnet) - count(focalnet_1ch) == 2 * 128 * 16


def test_vit_checkpoint_of_ours_without_the_pooler_still_loads(tmp_path):
    """ViT checkpoints saved before the pooler was part of the model load strictly (the
    pooler's output is unused, so the outputs are unchanged)."""
    ours = _randomise(ViT.from_config("tiny-cpu"))
    head = CosineHead(64, N_CLASSES)
    old = {k: v for k, v in ours.state_dict().items() if not k.startswith("pooler.")}
    torch.save(old, tmp_path / "embedding_model.ckpt")
    torch.save(head.state_dict(), tmp_path / "classifier.ckpt")
    loaded = ViT.from_config("tiny-cpu")
    load_classifier(
        loaded,
        CosineHead(64, N_CLASSES),
        str(tmp_path / "embedding_model.ckpt"),
        str(tmp_path / "classifier.ckpt"),
    )
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        _close(loaded.eval()(image).embedding, ours.eval()(image).embedding)
    fresh = ViT.from_config("tiny-cpu")
    fresh.load_state_dict(old, strict=True)  # the pre-hook: SpeechBrain's recoverables
    assert not any(p.requires_grad for p in fresh.pooler.parameters())
