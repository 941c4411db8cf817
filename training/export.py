"""Training runs → a model bundle: ONNX embedders and detector, checked, with their manifest.

Each embedder goes to ONNX with the TorchScript-based exporter (`torch.onnx.export(...,
dynamo=False)`, opset 17, dynamic batch axis): the torch.export-based one needs onnxscript,
which the training extra does not install, and the legacy one handles every timm CNN we train.
The tf_ backbones' "same" padding is fixed for the bundle's input size first
(training.fixed_padding) and the graph slimmed where that changes no output
(training.graph_slim): the pads become the convs' own and cost nothing per photo. fp16 is
onnxruntime's own graph converter (`onnxruntime.transformers.float16`), with fp16 inputs and
outputs, GeM's power and mean kept in fp32 (x³ of activations overflows fp16).

Export checks itself: the same catalogue photos go through the torch model and through
`app.embedder.OnnxEmbedder`, the class serving runs, and the export fails unless every cosine
reaches 0.999 (fp32) or 0.995 (fp16). With several runs the new_individual threshold is
re-tuned on their shared open-set validation, embedded by the bundle's own onnxruntime
pipeline (serving's embeddings, ensemble included), with `training.evaluate`'s sweep, and so
are its curve by gallery size and its offsets for encounters; one run's come from its
evaluation.json, tuned the same way on the same validation.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from app.embedder import INPUT_NAME, OUTPUT_NAME, OnnxEmbedder
from app.manifest import (
    BundleError,
    DetectorSpec,
    EmbedderSpec,
    EncounterOffset,
    Manifest,
    ThresholdPoint,
    file_digests,
    fingerprint_files,
)
from app.matcher_spec import LocalMethod
from app.pipeline import Pipeline
from app.preprocess import EmbedTransform, to_batch
from app.reranker import open_local_matcher
from gallery.errors import WhaleidError
from gallery.metrics import SweepResult
from training.catalogue import Photo, read_photo
from training.evaluate import (
    EmbeddedSet,
    encounter_offsets,
    summary,
    sweep,
    threshold_curve,
    write_sweep_csv,
)
from training.fixed_padding import fix_same_padding
from training.graph_slim import slimmed
from training.matcher_export import MatcherParity, export_matcher
from training.rerank_fit import RerankFit, embed_open_set, fit_rerank
from training.runs import Run
from training.splits import EvalSet

__all__ = [
    "FP16_MIN_COSINE",
    "FP32_MIN_COSINE",
    "OPSET",
    "ExportError",
    "ExportReport",
    "MatcherOptions",
    "Parity",
    "check_parity",
    "export_bundle",
    "export_embedder",
    "retune_threshold",
    "to_fp16",
]

OPSET = 17
FP32_MIN_COSINE = 0.999
FP16_MIN_COSINE = 0.995
PARITY_PHOTOS = 16
# Each crop is matched against the next and against a re-framed copy of itself, in torch and in
# onnxruntime: a handful gives a few hundred confident matches to compare.
MATCHER_PARITY_PHOTOS = 6
SWEEP_PNG = "sweep.png"
SWEEP_CSV = "sweep.csv"
RERANK_SWEEP_CSV = "rerank-sweep.csv"
# Ops kept in fp32 in fp16 models: GeM's x^p and its mean over positions overflow fp16.
_FP32_OPS = ["Pow", "ReduceMean"]


class ExportError(WhaleidError):
    """The runs cannot be exported, or the exported models disagree with torch."""


@dataclass(frozen=True)
class Parity:
    """Cosine between torch and onnxruntime embeddings of the same photos."""

    file: str
    photos: int
    min_cosine: float
    mean_cosine: float
    required: float

    @property
    def ok(self) -> bool:
        return self.min_cosine >= self.required


@dataclass(frozen=True)
class MatcherOptions:
    """`whaleid export --matcher`: the local matcher to add and how re-ranking is fitted."""

    extractor: str  # aliked or disk (app.matcher_spec.EXTRACTORS)
    keypoints: int = 512
    side: int = 512
    method: LocalMethod = "lightglue"
    shortlist: int = 20
    fusion: str = "auto"  # mean, logistic or auto (training.rerank_fit.FUSION_CHOICES)
    parity_photos: int = MATCHER_PARITY_PHOTOS

    @property
    def ransac_px(self) -> float:
        """mutual_nn's inlier distance: 2% of the letterbox side, as tests/test_matcher.py
        found to separate a re-framed copy from another animal."""
        return 0.02 * self.side


@dataclass
class ExportReport:
    """What `export_bundle` made: the manifest, each embedder's parity, the sweep if re-tuned,
    the matcher's parity and re-ranking fit when asked for, and the seconds each step took."""

    bundle: Path
    manifest: Manifest
    parity: list[Parity] = field(default_factory=list)
    sweep: SweepResult | None = None
    matcher_parity: MatcherParity | None = None
    rerank: RerankFit | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def export_embedder(
    model: nn.Module,
    input_size: tuple[int, int],
    out_file: Path,
    *,
    fp16: bool = False,
    lean: bool = True,
) -> None:
    """Write `model` (N, 3, H, W) → (N, D) as ONNX with a dynamic batch axis, fp32 or fp16.
    `lean`: "same" padding fixed for `input_size` and the graph slimmed (the same outputs,
    less work per photo); False writes the graph as torch's exporter does (bench/steps.py
    compares the two)."""
    model = model.float().eval().cpu()
    if lean:
        model = fix_same_padding(model, input_size)
    height, width = input_size
    # Batch 2 while tracing, so nothing can specialise on a batch of one.
    example = torch.zeros(2, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo (needs onnxscript): see top.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Fixed pads reach the graph through a reversed Slice of constants that torch does not
        # fold; slimmed() folds it.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(out_file),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    graph = onnx.load(str(out_file))
    if lean:
        graph = slimmed(graph, input_size)
    if fp16:
        graph = to_fp16(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out_file))


def to_fp16(graph: onnx.ModelProto, *, keep_io_types: bool = False) -> onnx.ModelProto:
    """An fp32 ONNX model in fp16 (onnxruntime's converter), the ops that overflow fp16 kept
    in fp32; keep_io_types: float32 inputs and outputs (for a model fed fp32 tensors)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = convert_float_to_float16(graph, keep_io_types=keep_io_types, op_block_list=_FP32_OPS)
    _sort_topologically(graph.graph)
    return graph


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Put nodes in dependency order: the fp16 converter appends the casts it inserts around
    fp32 ops at the end of the graph, which ONNX forbids."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError("the fp16 graph has a cycle or an undefined input")
        for node in ready:
            available.update(node.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def check_parity(
    model: nn.Module,
    onnx_file: Path,
    spec: EmbedderSpec,
    crops: Sequence[Image.Image],
    *,
    required: float,
    providers: Sequence[str] | None = None,
) -> Parity:
    """Embed `crops` with torch and with serving's OnnxEmbedder; fail below `required`.

    Raw model outputs are compared (cosine is blind to scale), in one batch larger than the
    tracing batch, so the dynamic batch axis is exercised too.
    """
    batch = to_batch(list(crops), spec.transform)
    with torch.no_grad():
        expected = model.float().eval()(torch.from_numpy(batch)).numpy()
    try:
        actual = OnnxEmbedder(onnx_file, spec, providers).run(batch)
    except BundleError as exc:
        msg = f"exported {onnx_file.name} does not load as serving loads it: {exc}"
        raise ExportError(msg) from exc
    cosine = np.sum(_unit(expected) * _unit(actual), axis=1)
    parity = Parity(
        file=onnx_file.name,
        photos=len(crops),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
        required=required,
    )
    if not parity.ok:
        raise ExportError(
            f"parity check failed for {onnx_file.name}: onnxruntime and torch embeddings of "
            f"{parity.photos} photos agree to cosine {parity.min_cosine:.5f} at worst "
            f"(mean {parity.mean_cosine:.5f}), {required - parity.min_cosine:.5f} short of "
            f"the {required} required"
        )
    return parity


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _parity_photos(run: Run, count: int) -> list[Photo]:
    """Photos of the run's catalogue for the parity check: held-out ones first (never trained
    on, so as varied as what serving will see), topped up from the rest."""
    photos = run.photos
    held = set(run.splits.open_set.queries)
    ordered = [p for p in photos if p.image in held] + [p for p in photos if p.image not in held]
    if not ordered:
        raise ExportError(f"run {run.path} lists no catalogue photos for the parity check")
    return ordered[:count]


def _parity_crops(run: Run, count: int, padding: float) -> list[Image.Image]:
    try:
        return [read_photo(p, padding) for p in _parity_photos(run, count)]
    except WhaleidError as exc:
        raise ExportError(
            f"the parity check reads photos of run {run.path}'s catalogue "
            f"({run.config.data.catalogue}), and one cannot be read: {exc}"
        ) from exc


def _same_open_set(runs: Sequence[Run]) -> EvalSet:
    """The open-set validation every run shares; refuses runs that held out different ones."""
    first = runs[0].open_set_split()
    names = ([p.image for p in first.gallery], [p.image for p in first.queries])
    for run in runs[1:]:
        other = run.open_set_split()
        if ([p.image for p in other.gallery], [p.image for p in other.queries]) != names:
            raise ExportError(
                f"runs {runs[0].path} and {run.path} hold out different open-set validations "
                "(catalogue, seed or data.open_set_* differ), so the ensemble's threshold cannot "
                "be tuned on them: train the runs with the same catalogue, seed and data split"
            )
    return first


def _common(runs: Sequence[Run], what: str, values: list[Any]) -> Any:
    if any(v != values[0] for v in values[1:]):
        shown = ", ".join(f"{r.path.name}: {v}" for r, v in zip(runs, values, strict=True))
        raise ExportError(f"the runs differ in {what} ({shown}); an ensemble needs one")
    return values[0]


def retune_threshold(
    pipeline: Pipeline,
    runs: Sequence[Run],
    bundle_dir: Path,
    embedded: EmbeddedSet | None = None,
) -> tuple[SweepResult, dict[str, float], list[ThresholdPoint], list[EncounterOffset]]:
    """Sweep the ensemble's threshold on the runs' shared open-set validation, its curve
    over smaller galleries (training.evaluate.threshold_curve) and its offsets for encounters
    of several photos (training.evaluate.encounter_offsets).

    Photos are embedded by the bundle's own pipeline exactly as serving will embed them
    (`training.rerank_fit.embed_open_set`; `embedded` when the caller already has them), so
    the threshold and the figures are those of the service on these photos. kNN, sweep grid
    and summary are training.evaluate's (the first run's eval settings). Writes sweep.png and
    sweep.csv into the bundle.
    """
    from training.plots import plot_sweep

    eval_set = _same_open_set(runs)
    if embedded is None:
        embedded = embed_open_set(pipeline, eval_set, local=False).embedded
    cfg = runs[0].config.eval
    result = sweep(embedded, cfg)
    figures = {k: float(v) for k, v in summary(result, eval_set).items() if v is not None}
    curve = threshold_curve(embedded, result, cfg, seed=runs[0].config.seed)
    offsets = encounter_offsets(embedded, result, cfg, seed=runs[0].config.seed)
    plot_sweep(result, bundle_dir / SWEEP_PNG, title=f"ensemble of {len(runs)}: threshold sweep")
    write_sweep_csv(result, bundle_dir / SWEEP_CSV)
    return (
        result,
        figures,
        [ThresholdPoint.model_validate(p) for p in curve],
        _manifest_offsets(offsets),
    )


def _manifest_offsets(tuned: list[dict[str, Any]]) -> list[EncounterOffset]:
    """training.evaluate.encounter_offsets' entries as the manifest keeps them (the figures
    behind each stay in evaluation.json)."""
    fields = EncounterOffset.model_fields
    return [EncounterOffset.model_validate({k: t[k] for k in fields}) for t in tuned]


def _single_run_figures(run: Run) -> dict[str, float]:
    figures = run.evaluation
    return {
        k: float(v)
        for k, v in figures.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _write_manifest(bundle_dir: Path, manifest: Manifest) -> Manifest:
    files = manifest.model_files
    manifest = manifest.model_copy(
        update={
            "file_digests": file_digests(bundle_dir, files),
            "fingerprint": fingerprint_files(bundle_dir, files),
        }
    )
    manifest.write(bundle_dir)
    return manifest


def export_bundle(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    detector_run: Path | None = None,
    fp16: bool = False,
    weights: Sequence[float] | None = None,
    parity_photos: int = PARITY_PHOTOS,
    checkpoint: str = "best",
    providers: Sequence[str] | None = None,
    check_detector: bool = True,
    matcher: MatcherOptions | None = None,
) -> ExportReport:
    """Export runs (an ensemble when several) and an optional detector run to a bundle at `out`.

    The bundle is built in `out`.partial and moved into place only when every check passed,
    so a failed export leaves no half bundle behind. `check_detector=False` skips the
    detector's own parity check (training.detector.export), for callers that checked it.
    `matcher`: add the local matcher (parity-checked on the first run's catalogue crops) and
    fit re-ranking on the open-set validation (training.rerank_fit) into `manifest.rerank`.
    """
    if not run_dirs:
        raise ExportError("no --run given")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder")
    weights = list(weights) if weights else [1.0] * len(run_dirs)
    if len(weights) != len(run_dirs) or any(w <= 0 for w in weights):
        raise ExportError(f"--weight: give one positive weight per --run ({len(run_dirs)})")
    runs = [Run(path) for path in run_dirs]
    for run in runs:
        if "threshold" not in run.evaluation:
            raise ExportError(f"run {run.path} has not been evaluated: run 'whaleid evaluate'")
    padding = _common(runs, "data.box_padding", [r.config.data.box_padding for r in runs])
    if len(runs) > 1:
        _same_open_set(runs)  # refuse early, before minutes of exporting

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        report = _export_into(
            work,
            runs,
            weights,
            detector_run,
            fp16,
            padding,
            parity_photos,
            checkpoint,
            providers,
            check_detector,
            matcher,
        )
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    work.rename(out)
    report.bundle = out
    return report


def _export_into(
    work: Path,
    runs: Sequence[Run],
    weights: Sequence[float],
    detector_run: Path | None,
    fp16: bool,
    padding: float,
    parity_photos: int,
    checkpoint: str,
    providers: Sequence[str] | None,
    check_detector: bool,
    matcher: MatcherOptions | None,
) -> ExportReport:
    seconds: dict[str, float] = {}
    required = FP16_MIN_COSINE if fp16 else FP32_MIN_COSINE
    specs: list[EmbedderSpec] = []
    parities: list[Parity] = []
    for i, (run, weight) in enumerate(zip(runs, weights, strict=True)):
        model = run.load_embedder(checkpoint)
        transform: EmbedTransform = run.transform()
        # timm names may be hub paths (hf-hub:org/name): keep the file name plain.
        name = f"embedder-{i}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', run.config.model.backbone)}.onnx"
        export_embedder(model, transform.input_size, work / name, fp16=fp16)
        spec = EmbedderSpec(
            file=name,
            timm_name=run.config.model.backbone,
            transform=transform,
            output_dim=int(model.embedding_size),
            weight=weight,
            flip_tta=run.config.eval.flip_tta,
        )
        crops = _parity_crops(run, parity_photos, padding)
        parities.append(check_parity(model, work / name, spec, crops, required=required))
        specs.append(spec)

    detector: DetectorSpec | None = None
    if detector_run is not None:
        from training.detector.export import export_detector

        # The embedders were trained on crops grown by data.box_padding: detected boxes too.
        detector = export_detector(
            Path(detector_run), work / "detector.onnx", padding=padding, check=check_detector
        )

    matcher_spec, matcher_parity = None, None
    if matcher is not None:
        start = time.perf_counter()
        matcher_spec, matcher_parity = export_matcher(
            matcher.extractor,
            work,
            input_side=matcher.side,
            max_keypoints=matcher.keypoints,
            parity_crops=_parity_crops(runs[0], max(2, matcher.parity_photos), padding),
            providers=providers,
        )
        seconds["matcher_export_and_parity"] = time.perf_counter() - start

    labels = [run.labels for run in runs]
    manifest = _write_manifest(
        work,
        Manifest(
            fingerprint="",
            detector=detector,
            embedders=specs,
            embedding_dim=sum(s.output_dim for s in specs),
            box_padding=padding,
            threshold=runs[0].threshold,
            threshold_curve=runs[0].evaluation.get("threshold_curve", []),
            # Runs evaluated before encounters were tuned have none: single-photo thresholds.
            encounter_offsets=_manifest_offsets(runs[0].evaluation.get("encounter_offsets", [])),
            species=sorted({s for lab in labels for s in lab.species}),
            cv_metrics=_single_run_figures(runs[0]),
            training_configs=[run.config.model_dump(mode="json") for run in runs],
            matcher=matcher_spec,
        ),
    )
    chosen = list(providers) if providers else None
    result, fit = None, None
    if len(runs) > 1 or matcher_spec is not None:
        start = time.perf_counter()
        pipeline = Pipeline.from_bundle(work, chosen)
        # One embedding of the validation serves the ensemble's threshold and the re-ranking.
        photos = embed_open_set(pipeline, _same_open_set(runs), local=matcher_spec is not None)
        seconds["embed_validation"] = time.perf_counter() - start
        if len(runs) > 1:
            result, figures, curve, offsets = retune_threshold(
                pipeline, runs, work, photos.embedded
            )
            tuned = {
                "threshold": result.best_threshold,
                "cv_metrics": figures,
                "threshold_curve": curve,
                "encounter_offsets": offsets,
            }
            manifest = _write_manifest(work, manifest.model_copy(update=tuned))
        if matcher is not None and matcher_spec is not None:
            start = time.perf_counter()
            local = open_local_matcher(
                work, matcher_spec, matcher.method, ransac_px=matcher.ransac_px, providers=chosen
            )
            fit = fit_rerank(
                photos,
                local,
                runs[0].config.eval,
                method=matcher.method,
                shortlist=matcher.shortlist,
                fusion=matcher.fusion,
                ransac_px=matcher.ransac_px,
                seed=runs[0].config.seed,
            )
            write_sweep_csv(fit.sweep, work / RERANK_SWEEP_CSV)
            manifest = _write_manifest(work, manifest.model_copy(update={"rerank": fit.spec}))
            seconds["rerank_fit"] = time.perf_counter() - start
    # Read back as serving will: files, fingerprint and every session's inputs and outputs.
    Pipeline.from_bundle(work, chosen)
    return ExportReport(
        bundle=work,
        manifest=manifest,
        parity=parities,
        sweep=result,
        matcher_parity=matcher_parity,
        rerank=fit,
        seconds=seconds,
    )
