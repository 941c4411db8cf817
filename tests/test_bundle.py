"""`whaleid export`: two tiny runs and the tiny detector → a bundle that serving loads; parity
against torch (fp32 and fp16), the ensemble's threshold re-tuned, and refusals that say why."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import TINY_RUN_B_EMBEDDING, ExportedBundle

from app.manifest import BundleError, Manifest
from app.pipeline import Pipeline
from gallery.errors import WhaleidError

# The first test to ask for the bundle trains two tiny runs and the detector (minutes on a
# shared CPU): more than the suite's default per-test timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
torch = pytest.importorskip("torch")


def test_the_bundle_holds_what_the_manifest_says(
    exported_bundle: ExportedBundle, tiny_run: Path
) -> None:
    from training.runs import Run

    bundle, report = exported_bundle.path, exported_bundle.report
    manifest = Manifest.read(bundle)
    assert manifest == report.manifest
    assert [e.output_dim for e in manifest.embedders][1] == TINY_RUN_B_EMBEDDING
    assert manifest.embedding_dim == sum(e.output_dim for e in manifest.embedders)
    assert manifest.detector is not None and manifest.detector.file == "detector.onnx"
    assert manifest.detector.padding == manifest.box_padding
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [*manifest.model_files, "manifest.json", "sweep.png", "sweep.csv"]
    )
    assert len(manifest.training_configs) == 2 and manifest.species
    # The ensemble's threshold is its own sweep's best, not either run's.
    assert manifest.threshold == pytest.approx(manifest.cv_metrics["threshold"])
    assert report.sweep.best_threshold == pytest.approx(manifest.threshold)
    assert {"map5", "map5_known", "map5_new", "queries"} <= set(manifest.cv_metrics)
    # ... and so is its curve over smaller galleries, which ends at the whole gallery.
    curve = manifest.threshold_curve
    assert len(curve) >= 3 and curve[-1].images == manifest.cv_metrics["gallery"]
    assert curve[-1].threshold == pytest.approx(manifest.threshold)
    assert all(a.threshold <= b.threshold for a, b in pairwise(curve))
    print(f"\nthreshold by gallery photos: {[(p.images, round(p.threshold, 3)) for p in curve]}")
    # ... and so are its offsets for encounters, each on every encounter the validation's
    # query photos make (40 held-out individuals, 4 or 5 queries each).
    queries = Counter(p.individual_id for p in Run(tiny_run).open_set_split().queries)
    offsets = manifest.encounter_offsets
    assert [o.photos for o in offsets] == [2, 3]
    for o in offsets:
        assert o.encounters == sum(n // o.photos for n in queries.values()) >= 10
        assert -0.5 < o.offset < 0.5
    print(f"encounter offsets: {[(o.photos, round(o.offset, 3), o.encounters) for o in offsets]}")
    print(f"export of 2 runs + detector: {exported_bundle.export_seconds:.1f} s")


def test_fp32_parity(exported_bundle: ExportedBundle) -> None:
    for parity in exported_bundle.report.parity:
        assert parity.required == 0.999 and parity.min_cosine >= 0.999 and parity.photos == 16
        print(f"\n{parity.file}: fp32 cosine min {parity.min_cosine:.7f}")


def test_embedders_carry_no_shape_arithmetic(exported_bundle: ExportedBundle) -> None:
    """tf_ backbones pad "same" from the runtime shape; at export the pads are fixed for the
    bundle's input size (tiny_run_b's 80 px included) and moved into the convs, and the batch
    axis stays dynamic."""
    import onnx

    manifest = exported_bundle.report.manifest
    for spec in manifest.embedders:
        graph = onnx.load(str(exported_bundle.path / spec.file)).graph
        ops = {node.op_type for node in graph.node}
        assert "Conv" in ops and not ops & {"Shape", "Gather", "Ceil", "Pad"}, spec.file
        (batch, *_) = graph.input[0].type.tensor_type.shape.dim
        assert batch.dim_param and not batch.dim_value, spec.file


def test_fp16_export(tiny_run: Path, tmp_path: Path) -> None:
    from training.export import export_bundle

    report = export_bundle([tiny_run], tmp_path / "b16", fp16=True)
    (parity,) = report.parity
    assert parity.required == 0.995 and parity.ok
    print(f"\n{parity.file}: fp16 cosine min {parity.min_cosine:.7f}")
    pipeline = Pipeline.from_bundle(tmp_path / "b16")
    assert pipeline.bundle.embedders[0].input_dtype == np.float16
    assert pipeline.bundle.detector is None
    # One run: its own tuned threshold and figures.
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    assert pipeline.manifest.threshold == pytest.approx(evaluation["threshold"])
    curve = [p.model_dump() for p in pipeline.manifest.threshold_curve]
    assert curve == evaluation["threshold_curve"] and len(curve) >= 3
    offsets = [o.model_dump() for o in pipeline.manifest.encounter_offsets]
    tuned = [
        {k: o[k] for k in ("photos", "offset", "encounters")}
        for o in evaluation["encounter_offsets"]
    ]
    assert offsets == tuned and [o["photos"] for o in offsets] == [2, 3]
    print(f"\none run's encounter offsets: {evaluation['encounter_offsets']}")


def test_a_tampered_model_file_is_named(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    target = copy / Manifest.read(bundle).embedders[1].file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{target.name} has changed since export"):
        Pipeline.from_bundle(copy)


def test_a_failed_parity_says_by_how_much(tmp_path: Path) -> None:
    from app.manifest import EmbedderSpec
    from app.preprocess import EmbedTransform
    from training.export import ExportError, check_parity, export_embedder

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    export_embedder(model, (8, 8), tmp_path / "e.onnx")
    spec = EmbedderSpec(
        file="e.onnx", timm_name="toy", transform=EmbedTransform(input_size=(8, 8)), output_dim=4
    )
    rng = np.random.default_rng(0)
    from PIL import Image

    crops = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    assert check_parity(model, tmp_path / "e.onnx", spec, crops, required=0.999).ok
    with torch.no_grad():
        model[1].weight.mul_(-1)  # the torch model no longer matches the file
    with pytest.raises(ExportError, match=r"e\.onnx: .* short of the 0\.999 required"):
        check_parity(model, tmp_path / "e.onnx", spec, crops, required=0.999)


def run_stub(src: Path, dst: Path) -> Path:
    """A run folder without its checkpoints: enough for export's early checks."""
    dst.mkdir()
    for name in ("config.yaml", "labels.json", "splits.json", "photos.json", "evaluation.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_runs_with_other_open_sets_are_refused(
    tiny_run: Path, tiny_run_b: Path, tmp_path: Path
) -> None:
    from training.export import export_bundle

    other = run_stub(tiny_run_b, tmp_path / "other")
    splits = json.loads((other / "splits.json").read_text())
    splits["open_set"]["queries"] = splits["open_set"]["queries"][1:]
    (other / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(WhaleidError, match="hold out different open-set validations"):
        export_bundle([tiny_run, other], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_export_refuses_a_non_empty_out_and_unevaluated_runs(
    tiny_run: Path, tmp_path: Path
) -> None:
    from training.export import export_bundle

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(WhaleidError, match="exists and is not empty"):
        export_bundle([tiny_run], tmp_path / "full")
    stub = run_stub(tiny_run, tmp_path / "stub")
    (stub / "evaluation.json").unlink()
    with pytest.raises(WhaleidError, match="has not been evaluated"):
        export_bundle([stub], tmp_path / "out")
