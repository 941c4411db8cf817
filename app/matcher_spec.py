"""The local matcher's part of a bundle manifest: an ONNX keypoint extractor and its matcher.

Export writes it, serving reads it: which files, the square side a crop is letterboxed to, how
many keypoints the extractor always returns (padded, with scores that say which are real), the
descriptor size, and the two thresholds applied outside the graphs (keypoint score, match
score), so they can be tuned without exporting again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gallery.rerank import Fusion

__all__ = ["EXTRACTORS", "LOCAL_METHODS", "CurvePoint", "LocalMethod", "MatcherSpec", "RerankSpec"]

# Keypoint extractors the wheel ships weights for, and the LightGlue weights trained on each.
EXTRACTORS = ("aliked", "disk")
# How two crops' keypoints are compared: the bundle's LightGlue, or mutual nearest descriptors
# + RANSAC in numpy (gallery.local_match), the cheap one for CPU hosts.
LocalMethod = Literal["lightglue", "mutual_nn"]
LOCAL_METHODS: tuple[LocalMethod, ...] = ("lightglue", "mutual_nn")


class MatcherSpec(BaseModel):
    """Keypoint extractor + LightGlue matcher, both ONNX, and the numbers to run them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extractor: Literal["aliked", "disk"] = Field(description="keypoint extractor family")
    extractor_file: str = Field(description="ONNX file: (N, 3, S, S) in [0, 1] → keypoints")
    matcher_file: str = Field(description="ONNX file: two keypoint sets → matches")
    input_side: int = Field(gt=0, multiple_of=32, description="square letterbox side S")
    max_keypoints: int = Field(gt=0, description="keypoints per crop, padded when fewer")
    descriptor_dim: int = Field(gt=0)
    detection_threshold: float = Field(
        ge=0.0, description="keypoint score under which a padded slot counts as no keypoint"
    )
    match_threshold: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="LightGlue match score at or under which a pair is no match",
    )
    border: int = Field(
        4, ge=0, description="keypoints this close to the letterbox padding are dropped"
    )

    @property
    def files(self) -> list[str]:
        """The model files, in the order the bundle fingerprint covers them."""
        return [self.extractor_file, self.matcher_file]


class CurvePoint(BaseModel):
    """The threshold tuned for a gallery of about this many embeddings."""

    model_config = ConfigDict(extra="forbid")

    images: int = Field(gt=0, description="gallery embeddings")
    threshold: float = Field(description="the best new_individual threshold at that size")


class RerankSpec(BaseModel):
    """Re-ranking a global shortlist by local matches, fitted at export on the open-set
    validation: which local method, the shortlist it was tuned with, the calibrations and
    their fusion, and the `new_individual` threshold on the fused probability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: LocalMethod = Field("lightglue", description="how two crops' keypoints are matched")
    shortlist: int = Field(20, gt=0, description="gallery photos re-ranked per query (B)")
    ransac_px: float = Field(
        8.0, gt=0.0, description="mutual_nn only: inlier distance in letterbox pixels"
    )
    fusion: Fusion
    threshold: float = Field(
        ge=0.0, le=1.0, description="fused P(same individual) under which new_individual leads"
    )
    threshold_curve: list[CurvePoint] = Field(
        default_factory=list, description="the fused threshold tuned on smaller galleries"
    )
    cv_metrics: dict[str, float] = Field(
        default_factory=dict, description="open-set validation figures with re-ranking on"
    )
