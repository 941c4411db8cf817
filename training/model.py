"""The embedder: any timm backbone → GeM → BN → (dropout) → Linear(embedding_size).

Papers:
- GeM: Fine-tuning CNN Image Retrieval with No Human Annotation - https://arxiv.org/abs/1711.02512
- EfficientNet-Lite (the default backbone): https://arxiv.org/abs/1905.11946 and
  https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite

This module is the only thing exported to ONNX; the margin head (`training.heads`) stays in
training. The backbone is picked by name through timm's common face (`num_classes=0`,
`global_pool=""`, `forward_features`), never with a branch per family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import timm
import torch
from timm.models import group_modules
from torch import Tensor, nn

from app.preprocess import IMAGENET_MEAN, IMAGENET_STD, EmbedTransform
from gallery.errors import WhaleidError
from training.config import ModelConfig
from training.pretrained import load_pretrained, pretrained_normalization

__all__ = ["EmbeddingModel", "GeM", "ModelConfig", "build_model"]


class GeM(nn.Module):
    """Generalised mean pooling, (mean over positions of x^p)^(1/p), with p learnable or fixed.

    p = 1 is average pooling and p → ∞ max pooling. Takes (N, C, *spatial) and returns (N, C).
    """

    p: Tensor

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.tensor([float(p)]))
        else:
            self.register_buffer("p", torch.tensor([float(p)]))

    def forward(self, x: Tensor) -> Tensor:
        # x^3 of fp16 activations overflows past ~40 (65504 max), so pool in fp32 under AMP.
        # The clamp keeps x^p real for fractional p (GeM is defined on non-negative features).
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().clamp(min=self.eps)
            p = self.p.float()
            return x.pow(p).mean(dim=tuple(range(2, x.ndim))).pow(1.0 / p)

    def extra_repr(self) -> str:
        return (
            f"p={self.p.item():.4f}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"
        )


class EmbeddingModel(nn.Module):
    """Backbone + GeM + neck → (N, embedding_size) embeddings, not L2-normalised."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            # pretrained=False always: no network at run time; weights come from cfg.pretrained.
            self.backbone = timm.create_model(
                cfg.backbone, pretrained=False, num_classes=0, global_pool=""
            )
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise WhaleidError(
                f"model.backbone: {exc}; see timm.list_models() for the names timm knows"
            ) from exc
        self.num_features: int = cast(int, self.backbone.num_features)
        self.embedding_size = cfg.embedding_size
        # forward_features returns NCHW for CNNs, NHWC for models that declare
        # output_fmt="NHWC", and (N, tokens, C) for ViTs: move channels to dim 1 in the last two.
        self._channels_last = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"
        self.pool = GeM(p=cfg.gem_p, learnable=cfg.gem_learnable)
        # BN → Linear, as DESIGN.md draws it. The Happywhale 1st place (knshnb) used GeM →
        # BatchNorm1d as the whole neck (their embedding was the pooled features); BN first
        # puts every GeM channel on one scale whatever the backbone and p, and the Linear then
        # gives a fixed embedding size for the bundle and the faiss index. No BN after the
        # Linear: the head L2-normalises, so a scale there would only be undone.
        self.neck = nn.Sequential(
            nn.BatchNorm1d(self.num_features),
            nn.Dropout(cfg.dropout),
            nn.Linear(self.num_features, cfg.embedding_size),
        )
        data_cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        source = pretrained_normalization(cfg.pretrained, cfg.backbone)
        if source is not None:
            self.mean, self.std = source
        else:
            self.mean = tuple(data_cfg.get("mean", IMAGENET_MEAN))
            self.std = tuple(data_cfg.get("std", IMAGENET_STD))
        interpolation = data_cfg.get("interpolation", "bilinear")
        self.interpolation: Literal["bilinear", "bicubic"] = (
            "bicubic" if interpolation == "bicubic" else "bilinear"
        )
        input_size = data_cfg.get("input_size", (3, 224, 224))
        self.default_input_size: tuple[int, int] = (int(input_size[1]), int(input_size[2]))
        self.frozen = _first_stages(self.backbone, cfg.freeze_stages)
        for module in self.frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> EmbeddingModel:
        # Frozen stages stay in eval mode so that their BatchNorm keeps the loaded statistics:
        # a few hundred photos of one species would otherwise drag ImageNet's away.
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Images → pooled backbone features (N, num_features), fp32."""
        forward_features = cast(Callable[[Tensor], Tensor], self.backbone.forward_features)
        feats = forward_features(x)
        if feats.ndim == 3 or self._channels_last:
            feats = feats.movedim(-1, 1)
        return cast(Tensor, self.pool(feats))

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.neck(self.forward_features(x)))

    def transform(self, input_size: tuple[int, int] | None = None) -> EmbedTransform:
        """The preprocessing these weights expect, for training, export and the manifest."""
        return EmbedTransform(
            input_size=input_size or self.default_input_size,
            mean=cast(tuple[float, float, float], tuple(float(v) for v in self.mean)),
            std=cast(tuple[float, float, float], tuple(float(v) for v in self.std)),
            interpolation=self.interpolation,
        )


def _first_stages(backbone: nn.Module, stages: int) -> list[nn.Module]:
    """The stem and the first `stages` stages of a timm backbone, by its coarse groups.

    timm numbers a model's coarse groups stem = 0, stages 1, 2, ... and the head last, the
    same way for every family, so this needs no branch per backbone.
    """
    if stages == 0:
        return []
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        raise WhaleidError(
            f"model.freeze_stages: {type(backbone).__name__} does not name its stages "
            "(no group_matcher); use freeze_stages: 0"
        )
    groups = sorted(group_modules(backbone, matcher(coarse=True)).items())
    if stages >= len(groups) - 1:
        raise WhaleidError(
            f"model.freeze_stages: {stages} would freeze the whole backbone "
            f"({len(groups) - 1} stages after the stem); use at most {len(groups) - 2}"
        )
    return [backbone.get_submodule(name) for _, names in groups[: stages + 1] for name in names]


def build_model(cfg: ModelConfig) -> EmbeddingModel:
    """The embedder of `cfg`, with `cfg.pretrained` loaded into its backbone when set."""
    model = EmbeddingModel(cfg)
    if cfg.pretrained:
        load_pretrained(model.backbone, cfg.pretrained, cfg.backbone)
    return model
