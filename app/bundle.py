"""Open a model bundle for serving: manifest checked, every model file in an onnxruntime session.

Loading validates everything a bundle promises before a photo is seen: manifest well-formed,
model files present and unchanged (per-file sha256 and the fingerprint), and each ONNX file's
inputs and outputs as the manifest describes. Every failure is a BundleError naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.detector import OnnxDetector
from app.embedder import OnnxEmbedder
from app.local_features import OnnxExtractor
from app.manifest import Manifest
from app.sessions import resolve_providers

__all__ = ["Bundle", "load_bundle"]


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, manifest and live sessions (detector and keypoint
    extractor None when it has none)."""

    path: Path
    manifest: Manifest
    embedders: list[OnnxEmbedder]
    detector: OnnxDetector | None
    extractor: OnnxExtractor | None = None

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


def load_bundle(
    bundle_dir: Path | str,
    providers: Sequence[str] | None = None,
    *,
    spinning: bool = False,
    manifest: Manifest | None = None,
) -> Bundle:
    """Read, verify and open the bundle in `bundle_dir` on `providers` (None: best available);
    `spinning` as in `app.sessions.open_session`. `manifest`: the bundle's manifest, already
    read and verified (another copy of the same models), so its files are not hashed again."""
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = Manifest.read(bundle_dir, verify=True)
    chosen = resolve_providers(providers)
    embedders = [
        OnnxEmbedder(bundle_dir / spec.file, spec, chosen, spinning=spinning)
        for spec in manifest.embedders
    ]
    detector = None
    if manifest.detector is not None:
        detector = OnnxDetector(
            bundle_dir / manifest.detector.file, manifest.detector, chosen, spinning=spinning
        )
    extractor = None
    if manifest.matcher is not None:
        extractor = OnnxExtractor(
            bundle_dir / manifest.matcher.extractor_file,
            manifest.matcher,
            chosen,
            spinning=spinning,
        )
    return Bundle(
        path=bundle_dir,
        manifest=manifest,
        embedders=embedders,
        detector=detector,
        extractor=extractor,
    )
