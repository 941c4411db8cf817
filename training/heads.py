"""Margin heads: ArcFace, sub-center ArcFace and dynamic (per-class) margins, plus a species head.

Papers:
- ArcFace: Additive Angular Margin Loss for Deep Face Recognition - https://arxiv.org/abs/1801.07698
- Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces
  - https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf
- Dynamic margins, m_c = a * n_c^(-lambda) + b, from the Google Landmark Recognition 2020 winners
  (https://arxiv.org/abs/2010.05350) and the Happywhale 2022 1st place
  (https://github.com/knshnb/kaggle-happywhale-1st-place, margins tuned with optuna).

The head owns the class centres and the loss and stays in training: only the embedder
(`training.model.EmbeddingModel`) is exported, as in insightface's arcface_torch. One margin
module (`AngularMargin`) covers the family: plain ArcFace is sub-center ArcFace with one centre,
and a fixed margin is a dynamic margin that is the same for every class.

Logits are computed in fp32 even under autocast: `s * cos` with s = 30 leaves fp16 about two
significant digits of the margin, and the loss over many classes is a long sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gallery.errors import WhaleidError
from training.config import HeadConfig

__all__ = [
    "AngularMargin",
    "HeadConfig",
    "HeadOutput",
    "MarginHead",
    "dynamic_margins",
]

# 1 - cos² is clamped away from 0 so that d sqrt / d cos stays finite at cos = ±1.
_SIN_EPS = 1e-7


@dataclass
class HeadOutput:
    """What one head step returns. All tensors are fp32."""

    loss: Tensor  # scalar: id loss + species_weight * species loss
    logits: Tensor  # (N, C) scaled, with the margin on the target class
    cosine: Tensor  # (N, C) cosine to the nearest centre of each class, no margin, no scale
    id_loss: Tensor  # scalar
    species_loss: Tensor | None = None
    species_logits: Tensor | None = None  # (N, num_species)


def dynamic_margins(class_counts: Tensor, a: float, b: float, lam: float) -> Tensor:
    """m_c = a * n_c^(-lambda) + b: rare individuals get a larger margin.

    Counts below 1 (a class with no training photo in this fold) are treated as 1, the
    largest margin, rather than dividing by zero.
    """
    counts = class_counts.to(torch.float64).clamp(min=1.0)
    return (a * counts.pow(-lam) + b).to(torch.float32)


class AngularMargin(nn.Module):
    """cos θ_y → cos(θ_y + m_y) on the target class, then scale by s (the ArcFace family).

    Margins are per class (a buffer of C values), so fixed and dynamic margins are one code path.
    `easy_margin` keeps cos θ where cos θ ≤ 0; otherwise past θ + m > π (cos θ ≤ cos(π - m)) the
    logit falls back to cos θ - m·sin(m), which keeps it monotonic in θ (insightface's th/mm).
    """

    margins: Tensor

    def __init__(self, margins: Tensor, s: float, easy_margin: bool = False) -> None:
        super().__init__()
        self.s = s
        self.easy_margin = easy_margin
        self.register_buffer("margins", margins.to(torch.float32).clone(), persistent=True)

    def forward(self, cosine: Tensor, labels: Tensor) -> Tensor:
        """(N, C) fp32 cosines and (N,) labels → (N, C) scaled logits with the margin."""
        # Rounding in normalize/linear can put |cos| a hair above 1; sqrt(1 - cos²) needs ≤ 1.
        cosine = cosine.clamp(-1.0, 1.0)
        idx = labels.view(-1, 1).long()
        cos_t = cosine.gather(1, idx)
        m = self.margins[idx]
        sin_t = (1.0 - cos_t * cos_t).clamp(min=_SIN_EPS).sqrt()
        phi = cos_t * torch.cos(m) - sin_t * torch.sin(m)
        if self.easy_margin:
            phi = torch.where(cos_t > 0, phi, cos_t)
        else:
            th = torch.cos(math.pi - m)
            mm = torch.sin(math.pi - m) * m
            phi = torch.where(cos_t > th, phi, cos_t - mm)
        # Only the target column changes, so work on (N, 1) and scatter it back: with tens of
        # thousands of individuals, a full (N, C) one-hot blend costs memory for nothing.
        return cosine.scatter(1, idx, phi) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, easy_margin={self.easy_margin}, classes={self.margins.numel()}"


class MarginHead(nn.Module):
    """Class centres + angular margin + cross-entropy, and an optional species classifier.

    Kept apart from the embedder: the training loop gives these parameters a larger learning
    rate, and only the embedder is exported.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        cfg: HeadConfig,
        class_counts: Tensor | None = None,
        num_species: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise WhaleidError(f"the margin head needs at least one class, got {num_classes}")
        self.cfg = cfg
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.k = cfg.centres
        # Row c * k + j is centre j of class c (sub-center ArcFace's layout).
        self.weight = nn.Parameter(torch.empty(num_classes * self.k, embedding_size))
        nn.init.xavier_uniform_(self.weight)

        if cfg.dynamic_margin:
            if class_counts is None:
                raise WhaleidError(
                    "head.dynamic_margin is true but no class counts were given; "
                    "pass the training fold's photos per individual, or set dynamic_margin: false"
                )
            if class_counts.numel() != num_classes:
                raise WhaleidError(
                    f"head.dynamic_margin: {class_counts.numel()} class counts for "
                    f"{num_classes} classes"
                )
            margins = dynamic_margins(class_counts, cfg.margin_a, cfg.margin_b, cfg.margin_lambda)
        else:
            margins = torch.full((num_classes,), cfg.m)
        self.margin = AngularMargin(margins, s=cfg.s, easy_margin=cfg.easy_margin)

        self.species: nn.Linear | None = None
        if cfg.species_weight > 0:
            if num_species < 1:
                raise WhaleidError(
                    "head.species_weight > 0 needs species labels; the catalogue has none "
                    "(set species_weight: 0)"
                )
            self.species = nn.Linear(embedding_size, num_species)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """(N, D) → (N, C) fp32 cosine to each class's nearest centre."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            cos = F.linear(x, w)
            if self.k > 1:
                cos = cos.view(-1, self.num_classes, self.k).amax(dim=2)
        return cos

    def forward(
        self, embeddings: Tensor, labels: Tensor, species: Tensor | None = None
    ) -> HeadOutput:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = self.cosine(embeddings)
            logits = self.margin(cosine, labels)
            id_loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
            loss = id_loss
            species_loss = species_logits = None
            if self.species is not None:
                species_logits = F.linear(
                    embeddings.float(), self.species.weight.float(), self.species.bias.float()
                )
                if species is not None:
                    species_loss = F.cross_entropy(species_logits, species)
                    loss = loss + self.cfg.species_weight * species_loss
        return HeadOutput(
            loss=loss,
            logits=logits,
            cosine=cosine.detach(),
            id_loss=id_loss,
            species_loss=species_loss,
            species_logits=species_logits,
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"centres={self.k}"
        )
