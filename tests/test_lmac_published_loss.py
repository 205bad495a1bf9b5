"""Our L-MAC loss against the published one, re-written here from SpeechBrain's train_lmac.py.

The published ``LMAC.compute_objectives`` / ``tv_loss`` / ``crosscor`` are transcribed below in
plain torch (same operations, same reductions) and compared with
:func:`audio_interpretability.brains.lmac.lmac_loss` on fixed tensors: the loss value and its
gradient with respect to the decoder output, for plain training and for fine-tuning with both
guidance and both cross-correlation types.
"""

import pytest
import torch
import torch.nn.functional as F

from audio_interpretability.brains.lmac import bounded_out_loss, lmac_loss

B, FRAMES, BINS, CLASSES = 4, 12, 10, 5


# ---------------------------------------------------------------- the published code, transcribed
def published_tv_loss(mask, tv_weight=1, power=2, border_penalty=0.3):
    if tv_weight is None or tv_weight == 0:
        return 0.0
    w_variance = torch.sum(torch.pow(mask[:, :, :-1] - mask[:, :, 1:], power))
    h_variance = torch.sum(torch.pow(mask[:, :-1, :] - mask[:, 1:, :], power))
    loss = tv_weight * (h_variance + w_variance) / float(power * mask.size(0))
    return loss


def published_crosscor(spectrogram, template, crosscortype):
    if crosscortype == "conv":
        spectrogram = spectrogram - spectrogram.mean((-1, -2), keepdim=True)
        template = template - template.mean((-1, -2), keepdim=True)
        template = template.unsqueeze(1)
        tmp = F.conv2d(spectrogram[None], template, bias=None, groups=spectrogram.shape[0])
        normalization1 = F.conv2d(
            spectrogram[None] ** 2, torch.ones_like(template), groups=spectrogram.shape[0]
        )
        normalization2 = F.conv2d(
            torch.ones_like(spectrogram[None]), template**2, groups=spectrogram.shape[0]
        )
        return (tmp / torch.sqrt(normalization1 * normalization2 + 1e-8)).squeeze()
    dotp = (spectrogram * template).mean((-1, -2))
    norms_specs = spectrogram.pow(2).mean((-1, -2)).sqrt()
    norms_templates = template.pow(2).mean((-1, -2)).sqrt()
    return dotp / (norms_specs * norms_templates)


def published_loss(predictions, mask_in_preds, mask_out_preds, xhat, X, X_clean, hp):
    """compute_objectives of the published LMAC (use_mask_output True), minus the metrics."""
    mask_in = xhat * X
    if hp["finetuning"]:
        crosscor = published_crosscor(X_clean, mask_in, hp["crosscortype"])
        crosscor_mask = (crosscor >= hp["crosscor_th"]).float()
        max_batch = X_clean.view(X_clean.shape[0], -1).max(1).values.view(-1, 1, 1)
        binarized_oracle = (X_clean >= hp["bin_th"] * max_batch).float()
        if hp["guidelosstype"] == "binary":
            rec_loss = (
                F.binary_cross_entropy(xhat, binarized_oracle, reduction="none").mean((-1, -2))
                * hp["g_w"]
                * crosscor_mask
            ).mean()
        else:
            temp = ((xhat * X[:, : X_clean.shape[1], :]) - X_clean).pow(2).mean((-1, -2))
            rec_loss = (temp * crosscor_mask).mean() * hp["g_w"]
    else:
        rec_loss = 0
        crosscor_mask = torch.zeros(xhat.shape[0])
    class_pred = predictions.argmax(1)
    l_in = F.nll_loss(mask_in_preds.log_softmax(1), class_pred)
    l_out = -F.nll_loss(mask_out_preds.log_softmax(1), class_pred)
    ao_loss = l_in * hp["l_in_w"] + hp["l_out_w"] * l_out
    r_m = (xhat.abs().mean((-1, -2, -3)) * hp["reg_w_l1"] * torch.logical_not(crosscor_mask)).sum()
    r_m += (tv_loss_value(xhat, hp) * torch.logical_not(crosscor_mask)).sum()
    return ao_loss + r_m + rec_loss


def tv_loss_value(xhat, hp):
    return published_tv_loss(xhat) * hp["reg_w_tv"]


# ---------------------------------------------------------------- fixed tensors
def case():
    gen = torch.Generator().manual_seed(0)
    clean = torch.zeros(B, FRAMES, BINS)
    clean[:, :, : BINS // 2] = torch.rand(B, FRAMES, BINS // 2, generator=gen) + 0.5
    X = clean + 0.3 * torch.rand(B, FRAMES, BINS, generator=gen)
    logits = torch.randn(B, FRAMES, BINS, generator=gen)
    # the first two clips' masks keep the clean half: they pass the guidance gate;
    logits[:2, :, : BINS // 2] += 6.0
    logits[:2, :, BINS // 2 :] -= 6.0
    # the last two keep the other half: they fail it
    logits[2:, :, : BINS // 2] -= 6.0
    logits[2:, :, BINS // 2 :] += 6.0
    W = torch.randn(FRAMES * BINS, CLASSES, generator=gen) / 10
    predictions = torch.randn(B, CLASSES, generator=gen) * 3
    return X, clean, logits, W, predictions


def both_losses(hp):
    X, clean, logits, W, predictions = case()
    results = []
    for ours in (True, False):
        z = logits.clone().requires_grad_(True)
        xhat = torch.sigmoid(z)
        logits_in = (xhat * X).flatten(1) @ W  # a tiny differentiable "classifier"
        logits_out = ((1 - xhat) * X).flatten(1) @ W
        if ours:
            loss, gate = lmac_loss(
                predictions, logits_in, logits_out, z, X, clean, **hp, regularizer="published"
            )
        else:
            loss, gate = (
                published_loss(predictions, logits_in, logits_out, xhat, X, clean, hp),
                None,
            )
        loss.backward()
        results.append((loss.detach(), z.grad, gate))
    return results


BASE = {
    "l_in_w": 4.0,
    "l_out_w": 0.2,
    "reg_w_l1": 0.4,
    "reg_w_tv": 0.3,
    "g_w": 4.0,
    "crosscor_th": 0.6,
    "bin_th": 0.35,
}


@pytest.mark.parametrize("reg_w_tv", [0.0, 0.3])
def test_plain_training_matches_the_published_loss_and_gradient(reg_w_tv):
    hp = dict(
        BASE, reg_w_tv=reg_w_tv, finetuning=False, crosscortype="dotp", guidelosstype="binary"
    )
    (ours, g_ours, gate), (theirs, g_theirs, _) = both_losses(hp)
    assert not gate.any()
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours, theirs)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-7)
    # the regulariser scales with the batch: B x the per-clip weight
    X, _, logits, _, _ = case()
    assert float(ours) > 0 and B * 0.4 * float(torch.sigmoid(logits).mean()) > 0


@pytest.mark.parametrize("crosscortype", ["dotp", "conv"])
@pytest.mark.parametrize("guidelosstype", ["binary", "l2"])
def test_finetuning_matches_the_published_loss_and_gradient(crosscortype, guidelosstype):
    hp = dict(BASE, finetuning=True, crosscortype=crosscortype, guidelosstype=guidelosstype)
    (ours, g_ours, gate), (theirs, g_theirs, _) = both_losses(hp)
    assert gate.tolist() == [True, True, False, False]  # the case exercises both branches
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours, theirs)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-7)


def test_the_regulariser_grows_with_the_batch_size_as_published():
    """Doubling the batch (the same clips twice) doubles the published L1 term; per_sample not."""
    X, _, logits, _, predictions = case()
    zero = torch.zeros(B, CLASSES)
    kw = {"l_in_w": 0.0, "l_out_w": 0.0, "reg_w_l1": 0.4}
    one, _ = lmac_loss(predictions, zero, zero, logits, X, **kw)
    two, _ = lmac_loss(
        torch.cat((predictions,) * 2),
        torch.cat((zero,) * 2),
        torch.cat((zero,) * 2),
        torch.cat((logits,) * 2),
        torch.cat((X,) * 2),
        **kw,
    )
    assert torch.allclose(two, 2 * one)
    assert torch.allclose(one, B * 0.4 * torch.sigmoid(logits).mean())
    ps_one, _ = lmac_loss(predictions, zero, zero, logits, X, **kw, regularizer="per_sample")
    assert torch.allclose(ps_one, one / B)
    with pytest.raises(ValueError, match="regularizer"):
        lmac_loss(predictions, zero, zero, logits, X, regularizer="batch")


def test_bounded_out_loss_is_minus_log_one_minus_p_and_stops_rewarding():
    """``out_loss: bounded``: the masked-out term is ``-log(1 - p_y)``, finite where p_y
    rounds to 1, and its reward vanishes once y has lost the masked-out clip, where the
    published ``-CE`` keeps rewarding without bound."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(B, CLASSES, generator=gen, dtype=torch.float64)
    y = z.argmax(dim=-1)
    p = z.softmax(dim=-1).gather(1, y[:, None])[:, 0]
    assert torch.allclose(bounded_out_loss(z, y).double(), -(1 - p).log().mean(), rtol=1e-6)
    assert torch.isfinite(bounded_out_loss(torch.tensor([[200.0, -200.0]]), torch.tensor([0])))
    # the class pushed further and further out: bounded -> 0, published -> -inf
    X, _, logits, _, predictions = case()
    zero = torch.zeros(B, CLASSES)
    target = predictions.argmax(dim=-1)
    kw = {"l_in_w": 0.0, "l_out_w": 0.2, "reg_w_l1": 0.0}
    bounded, published = [], []
    for margin in (1.0, 10.0, 100.0):
        out = zero - margin * F.one_hot(target, CLASSES)  # y less and less likely
        bounded.append(
            float(lmac_loss(predictions, zero, out, logits, X, **kw, out_loss="bounded")[0])
        )
        published.append(float(lmac_loss(predictions, zero, out, logits, X, **kw)[0]))
    assert published[2] < published[1] < published[0] and published[2] < -19  # 0.2 * -100
    assert 0 <= bounded[2] < bounded[1] < bounded[0] and bounded[2] < 1e-30
    # its gradient with respect to the masked-out logits vanishes there too
    out = (zero - 100.0 * F.one_hot(target, CLASSES)).requires_grad_(True)
    lmac_loss(predictions, zero, out, logits, X, **kw, out_loss="bounded")[0].backward()
    assert out.grad.abs().max() < 1e-30
    with pytest.raises(ValueError, match="out_loss"):
        lmac_loss(predictions, zero, zero, logits, X, out_loss="entropy")
