"""One ensemble member: an onnxruntime session that turns crops into L2-normalised embeddings.

The session is checked against the manifest when it is opened (one image input (N, 3, H, W)
with H, W the manifest's input size, one (N, D) output with D its output_dim), so a bundle
whose files and manifest disagree fails at load time, not on the first photo. fp16 models take
fp16 input; answers are always float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.manifest import BundleError, EmbedderSpec
from app.preprocess import embed_with_flip, l2_normalize
from app.sessions import open_session

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxEmbedder",
    "combine",
]

# The names export gives the graph's ends; serving reads whatever the file has but checks there
# is exactly one of each.
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"

_ORT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


def combine(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The ensemble embedding: each member's embedding normalised, weighted, concatenated and
    normalised again.

    Each part is scaled by sqrt(weight), so the cosine of two combined embeddings is the
    weight-averaged cosine of the members: a weight is a member's share of the similarity.
    Training (threshold re-tuning) and serving both call this, so they agree.
    """
    if len(parts) != len(weights) or not parts:
        raise ValueError(f"{len(parts)} embeddings for {len(weights)} weights")
    scaled = [l2_normalize(p) * np.float32(np.sqrt(w)) for p, w in zip(parts, weights, strict=True)]
    return l2_normalize(np.concatenate(scaled, axis=1))


class OnnxEmbedder:
    """A checked onnxruntime session for one embedder of a bundle."""

    def __init__(
        self,
        path: Path,
        spec: EmbedderSpec,
        providers: Sequence[str] | None = None,
        *,
        spinning: bool = False,
    ):
        self.path = Path(path)
        self.spec = spec
        self.session = open_session(self.path, providers, spinning=spinning)
        self.input_name, self.input_dtype = self._check_input()
        self.output_name = self._check_output()

    def _check_input(self) -> tuple[str, type[np.floating[Any]]]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{self.path}: expected one input, found {len(inputs)}")
        (arg,) = inputs
        height, width = self.spec.transform.input_size
        shape = list(arg.shape)
        if len(shape) != 4 or shape[1:] != [3, height, width]:
            raise BundleError(
                f"{self.path}: input {arg.name!r} has shape {shape}; the manifest says "
                f"(batch, 3, {height}, {width})"
            )
        if isinstance(shape[0], int):
            raise BundleError(
                f"{self.path}: input {arg.name!r} has a fixed batch size {shape[0]}; "
                "re-export with a dynamic batch axis"
            )
        if arg.type not in _ORT_TYPES:
            raise BundleError(f"{self.path}: input {arg.name!r} is {arg.type}, not float/float16")
        return arg.name, _ORT_TYPES[arg.type]

    def _check_output(self) -> str:
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise BundleError(f"{self.path}: expected one output, found {len(outputs)}")
        (arg,) = outputs
        shape = list(arg.shape)
        if len(shape) != 2 or shape[1] != self.spec.output_dim:
            raise BundleError(
                f"{self.path}: output {arg.name!r} has shape {shape}; the manifest says "
                f"(batch, {self.spec.output_dim})"
            )
        return arg.name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) preprocessed float32 → (N, D) raw float32 model output."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.spec.output_dim), dtype=np.float32)
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) preprocessed → (N, D) L2-normalised, with flip TTA when the manifest
        says so: original and flipped go through in one call, and their normalised embeddings
        are averaged, then normalised again."""
        if not self.spec.flip_tta:
            return l2_normalize(self.run(batch))
        return embed_with_flip(self.run, batch)
