"""Margin heads against an independent float64 numpy reference of the ArcFace formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gallery.errors import WhaleidError
from training.heads import HeadConfig, MarginHead, dynamic_margins

D = 8  # embedding size


def reference_logits(
    x: np.ndarray,
    w: np.ndarray,
    labels: np.ndarray,
    margins: np.ndarray,
    s: float,
    easy_margin: bool,
    k: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """ArcFace written out: cos θ to the nearest of k centres, cos(θ + m) on the target class.

    Uses arccos/cos(θ + m) rather than the head's cos·cos m − sin·sin m, so the two agree only
    if both are right. Returns (scaled logits, cosines).
    """
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = (xn @ wn.T).reshape(len(x), -1, k).max(axis=2)
    logits = s * cos.copy()
    for i, y in enumerate(labels):
        c, m = float(np.clip(cos[i, y], -1, 1)), float(margins[y])
        target = math.cos(math.acos(c) + m)
        if easy_margin:
            phi = target if c > 0 else c
        else:
            # past θ + m > π the margin would raise the logit again: fall back to c − m·sin(m)
            phi = target if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m
        logits[i, y] = s * phi
    return logits, cos


def reference_loss(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """Cross-entropy against (1 − ε)·one-hot + ε/C, averaged over the batch."""
    n, c = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((n, c), smoothing / c)
    q[np.arange(n), labels] += 1.0 - smoothing
    return float(-(q * log_p).sum(axis=1).mean())


def embeddings_at(w: np.ndarray, labels: np.ndarray, cosines: list[float], seed: int) -> np.ndarray:
    """Rows whose cosine to their class centre is exactly the given value (to fp rounding)."""
    rng = np.random.default_rng(seed)
    rows = []
    for y, c in zip(labels, cosines, strict=True):
        u = w[y] / np.linalg.norm(w[y])
        v = rng.normal(size=w.shape[1])
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        rows.append(3.0 * (c * u + math.sqrt(1 - c * c) * v))  # any norm: the head normalises
    return np.stack(rows)


def head_weight(head: MarginHead) -> np.ndarray:
    return head.weight.detach().double().numpy()


# Target cosines on both sides of 0 (easy_margin's switch) and of cos(π − 0.5) ≈ −0.878.
COSINES = [0.93, 0.41, 0.02, -0.3, -0.7, -0.95]
LABELS = np.array([0, 1, 2, 3, 4, 1])


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_logits_match_reference(easy_margin: bool) -> None:
    torch.manual_seed(0)
    cfg = HeadConfig(s=30.0, m=0.5, easy_margin=easy_margin)
    head = MarginHead(D, 5, cfg)
    w = head_weight(head)
    x = embeddings_at(w, LABELS, COSINES, seed=1)
    out = head(torch.from_numpy(x).float(), torch.from_numpy(LABELS))

    want, cos = reference_logits(x, w, LABELS, np.full(5, 0.5), 30.0, easy_margin)
    np.testing.assert_allclose(cos[np.arange(6), LABELS], COSINES, atol=1e-9)
    np.testing.assert_allclose(out.logits.detach().numpy(), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.cosine.numpy(), cos, atol=1e-6)
    assert out.logits.dtype == torch.float32
    # Both branches were taken: the margin lowers the target logit, except that easy_margin
    # leaves cos θ ≤ 0 alone.
    idx = (torch.arange(6), torch.from_numpy(LABELS))
    lowered = out.logits[idx] < 30.0 * out.cosine[idx] - 1e-3
    expect = [c > 0 for c in COSINES] if easy_margin else [True] * 6
    assert lowered.tolist() == expect
    np.testing.assert_allclose(out.loss.item(), reference_loss(want, LABELS, 0.0), rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_goes_through_the_loss(smoothing: float) -> None:
    torch.manual_seed(1)
    head = MarginHead(D, 5, HeadConfig(s=16.0, m=0.3, label_smoothing=smoothing))
    w = head_weight(head)
    x = embeddings_at(w, LABELS, COSINES, seed=2)
    out = head(torch.from_numpy(x).float(), torch.from_numpy(LABELS))
    logits, _ = reference_logits(x, w, LABELS, np.full(5, 0.3), 16.0, easy_margin=False)
    np.testing.assert_allclose(
        out.loss.item(), reference_loss(logits, LABELS, smoothing), rtol=1e-5
    )
    assert out.loss.item() != pytest.approx(reference_loss(logits, LABELS, 0.0), rel=1e-3)


def test_subcenter_takes_the_nearest_centre() -> None:
    torch.manual_seed(2)
    k, classes = 3, 4
    head = MarginHead(D, classes, HeadConfig(kind="subcenter", subcenters=k, s=20.0, m=0.4))
    assert head.weight.shape == (classes * k, D)
    w = head_weight(head)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, D))
    labels = np.array([0, 1, 2, 3, 0, 2, 3])
    out = head(torch.from_numpy(x).float(), torch.from_numpy(labels))
    want, cos = reference_logits(x, w, labels, np.full(classes, 0.4), 20.0, False, k=k)
    np.testing.assert_allclose(out.cosine.numpy(), cos, atol=1e-6)
    np.testing.assert_allclose(out.logits.detach().numpy(), want, rtol=1e-5, atol=1e-4)
    # and it is not the mean, nor the first centre
    flat = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)
    ).T
    assert not np.allclose(cos, flat.reshape(7, classes, k).mean(axis=2), atol=1e-3)
    assert not np.allclose(cos, flat.reshape(7, classes, k)[:, :, 0], atol=1e-3)


def test_dynamic_margins_per_class_from_counts() -> None:
    torch.manual_seed(3)
    counts = np.array([1, 2, 5, 40, 0])
    a, b, lam = 0.27, 0.05, 0.36
    cfg = HeadConfig(dynamic_margin=True, margin_a=a, margin_b=b, margin_lambda=lam, s=24.0)
    head = MarginHead(D, 5, cfg, class_counts=torch.from_numpy(counts))
    want_m = a * np.maximum(counts, 1).astype(np.float64) ** (-lam) + b
    np.testing.assert_allclose(head.margin.margins.numpy(), want_m, rtol=1e-6)
    assert want_m[0] > want_m[1] > want_m[2] > want_m[3]  # rare individuals: larger margins
    np.testing.assert_allclose(
        dynamic_margins(torch.tensor([1.0, 16.0]), 0.5, 0.05, 0.25).numpy(), [0.55, 0.3]
    )

    w = head_weight(head)
    labels = np.array([0, 1, 2, 3, 4, 3])
    x = embeddings_at(w, labels, COSINES, seed=4)
    out = head(torch.from_numpy(x).float(), torch.from_numpy(labels))
    want, _ = reference_logits(x, w, labels, want_m, 24.0, easy_margin=False)
    np.testing.assert_allclose(out.logits.detach().numpy(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["arcface", "subcenter"])
def test_low_precision_input_gives_fp32_logits(dtype: torch.dtype, kind: str) -> None:
    torch.manual_seed(4)
    head = MarginHead(D, 5, HeadConfig(kind=kind, species_weight=0.5), num_species=3)
    x = torch.randn(6, D)
    labels, species = torch.from_numpy(LABELS), torch.tensor([0, 1, 2, 0, 1, 2])
    full = head(x, labels, species)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = head(x.to(dtype), labels, species)
    for t in (low.loss, low.logits, low.cosine, low.id_loss, low.species_loss, low.species_logits):
        assert t is not None and t.dtype == torch.float32
    # Only the input was rounded; the head computed in fp32 (bf16 logits would be off by ~0.1).
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(
        low.logits.detach().numpy(), full.logits.detach().numpy(), atol=tol * 30
    )
    x_rounded = x.to(dtype).float()
    again = head(x_rounded, labels, species)
    np.testing.assert_allclose(
        low.logits.detach().numpy(), again.logits.detach().numpy(), rtol=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("kind", ["arcface", "subcenter"])
def test_finite_loss_and_gradients_at_cos_plus_minus_one(easy_margin: bool, kind: str) -> None:
    torch.manual_seed(5)
    head = MarginHead(D, 4, HeadConfig(kind=kind, easy_margin=easy_margin))
    centres = head.weight.detach()[:: head.k]  # centre 0 of each class
    labels = torch.tensor([0, 1, 2, 3])
    # cos exactly +1 (the centre itself, scaled) and −1 (its opposite)
    x = torch.stack([2 * centres[0], 0.5 * centres[1], -centres[2], -3 * centres[3]])
    x.requires_grad_(True)
    out = head(x, labels)
    target = out.cosine[torch.arange(4), labels]
    assert target[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    if kind == "arcface":
        assert target[2:].tolist() == pytest.approx([-1.0, -1.0], abs=1e-6)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(out.logits).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_species_head_adds_its_weighted_loss() -> None:
    torch.manual_seed(6)
    head = MarginHead(D, 5, HeadConfig(species_weight=0.4), num_species=3)
    assert head.species is not None
    x = torch.randn(6, D)
    labels, species = torch.from_numpy(LABELS), torch.tensor([0, 1, 2, 0, 1, 2])
    out = head(x, labels, species)
    want_logits = x @ head.species.weight.detach().T + head.species.bias.detach()
    assert out.species_logits is not None and out.species_loss is not None
    torch.testing.assert_close(out.species_logits.detach(), want_logits)
    torch.testing.assert_close(out.species_loss.detach(), F.cross_entropy(want_logits, species))
    torch.testing.assert_close(
        out.loss.detach(), out.id_loss.detach() + 0.4 * out.species_loss.detach()
    )
    out.loss.backward()
    assert head.species.weight.grad is not None

    # without species labels, logits but no species loss
    out = head(x, labels)
    assert out.species_loss is None and out.species_logits is not None
    torch.testing.assert_close(out.loss, out.id_loss)
    # disabled by default
    plain = MarginHead(D, 5, HeadConfig(), num_species=3)
    assert plain.species is None and plain(x, labels, species).species_logits is None


def test_config_errors_name_the_option() -> None:
    with pytest.raises(WhaleidError, match="dynamic_margin"):
        MarginHead(D, 5, HeadConfig(dynamic_margin=True))
    with pytest.raises(WhaleidError, match="dynamic_margin"):
        MarginHead(D, 5, HeadConfig(dynamic_margin=True), class_counts=torch.ones(4))
    with pytest.raises(WhaleidError, match="species_weight"):
        MarginHead(D, 5, HeadConfig(species_weight=1.0), num_species=0)
    with pytest.raises(ValueError, match="extra"):
        HeadConfig.model_validate({"kind": "arcface", "margin": 0.5})
    with pytest.raises(ValueError):
        HeadConfig(kind="cosface")  # type: ignore[arg-type]
