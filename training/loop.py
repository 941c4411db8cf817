"""The training loop: one run folder in, a trained and evaluated embedder out.

AdamW with a larger LR for the margin head, linear warmup then cosine per step, AMP and
channels_last on CUDA, gradient clipping, a checkpoint every epoch (resumable), seeded
everything, and torchrun DDP where each process takes its share of every global batch.
Process 0 prepares the run folder, evaluates and writes; the others read what it prepared.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from app.preprocess import EmbedTransform
from training import runs
from training.catalogue import Photo, load_catalogue
from training.config import TrainConfig
from training.data import GlobalBatchSampler, PhotoDataset
from training.distributed import Dist, setup, teardown
from training.evaluate import (
    EmbeddedSet,
    embed_eval_set,
    encounter_offsets,
    score_at,
    summary,
    sweep,
    threshold_curve,
    write_sweep_csv,
)
from training.heads import MarginHead
from training.model import EmbeddingModel, build_model
from training.plots import plot_curves, plot_sweep
from training.runs import Labels, Run
from training.splits import EvalSet, make_splits
from training.viewpoints import by_viewpoint, flip_classes

__all__ = ["Trainee", "default_run_dir", "train"]


class Trainee(nn.Module):
    """Embedder + margin head as one module, so DDP syncs both with one wrapper."""

    def __init__(self, model: EmbeddingModel, head: MarginHead, autocast: bool) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.autocast = autocast

    def forward(self, x: torch.Tensor, labels: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=self.autocast):
            embeddings = self.model(x)
        # Margins need acos near ±1: the head always runs in float32.
        return self.head(embeddings.float(), labels, species).loss


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out) / (cfg.name or f"{stamp}-{cfg.model.backbone}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare(cfg: TrainConfig, run_dir: Path) -> None:
    """Process 0, new runs only: catalogue, splits, labels and config into the run folder."""
    catalogue = load_catalogue(cfg.data)
    if catalogue.unreadable:
        print(f"skipped {len(catalogue.unreadable)} unreadable photo(s):")
        for line in catalogue.unreadable:
            print(f"  {line}")
    splits = make_splits(catalogue.photos, cfg.data, cfg.seed)
    by_name = {p.image: p for p in catalogue.photos}
    (run_dir / runs.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    runs.save_photos(catalogue.photos, run_dir / runs.PHOTOS)
    splits.save(run_dir / runs.SPLITS)
    train_photos = [by_name[n] for n in splits.train]
    labels = Labels.fit(train_photos, by_viewpoint=by_viewpoint(cfg.data, catalogue.photos))
    labels.save(run_dir / runs.LABELS)


def _param_groups(trainee: Trainee, cfg: TrainConfig) -> list[dict[str, Any]]:
    lr, wd = cfg.optim.lr, cfg.optim.weight_decay
    return [
        {
            "params": [p for p in trainee.model.parameters() if p.requires_grad],
            "lr": lr,
            "weight_decay": wd,
        },
        {
            "params": list(trainee.head.parameters()),
            "lr": lr * cfg.optim.head_lr_mult,
            "weight_decay": wd,
        },
    ]


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = cfg.optim.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    floor = cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _freeze_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _save_checkpoint(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never leave a half-written last.pt behind a crash


def _append_metrics(run_dir: Path, record: dict[str, Any], resume_epoch: int | None) -> list[dict]:
    path = run_dir / runs.METRICS
    records = Run(run_dir).metrics
    if resume_epoch is not None:
        records = [r for r in records if r["epoch"] < record["epoch"]]
    records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def train(cfg: TrainConfig, run_dir: Path | None = None, *, resume: bool = False) -> Path:
    """Train (or resume) the run in `run_dir` (default: under cfg.out); returns the folder."""
    state, device = setup(cfg.device)
    try:
        return _train(
            cfg, Path(run_dir) if run_dir else default_run_dir(cfg), resume, state, device
        )
    finally:
        teardown(state)


@dataclass
class _Session:
    """Everything one training process holds: the run, the trainee and its optimiser, the data."""

    cfg: TrainConfig
    run: Run
    dist: Dist
    device: torch.device
    transform: EmbedTransform
    trainee: Trainee
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dataset: PhotoDataset
    sampler: GlobalBatchSampler
    loader: DataLoader
    start_epoch: int = 0
    best: float = -1.0  # the best open-set MAP@5 so far; lives on process 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, dist: Dist, device: torch.device) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dist.is_main and not resume:
        _prepare(cfg, run_dir)
    dist.barrier()
    session = _session(cfg, Run(run_dir), dist, device)
    if resume:
        _resume(session)
    wrapped: nn.Module = (
        DistributedDataParallel(session.trainee) if dist.enabled else session.trainee
    )
    for epoch in range(session.start_epoch, cfg.optim.epochs):
        record = _train_epoch(session, wrapped, epoch)
        if dist.is_main:
            _end_epoch(session, epoch, record, resumed=resume)
        dist.barrier()
        wrapped.train()

    if dist.is_main and cfg.eval.at_end:
        evaluate_run(session.run, device=device)
    dist.barrier()
    return run_dir


def _session(cfg: TrainConfig, run: Run, dist: Dist, device: torch.device) -> _Session:
    """The model, head, optimiser, schedule and data of a run, seeded, on `device`."""
    cuda = device.type == "cuda"
    labels = run.labels
    by_name = {p.image: p for p in run.photos}
    train_photos: list[Photo] = [by_name[n] for n in run.splits.train]
    species_code = {s: i for i, s in enumerate(labels.species)}
    class_ids = labels.codes(train_photos)

    _seed_everything(cfg.seed)
    model = build_model(cfg.model)
    transform = model.transform((cfg.data.image_size, cfg.data.image_size))
    if dist.is_main:
        (run.path / runs.TRANSFORM).write_text(transform.model_dump_json(indent=1) + "\n")
    counts = torch.bincount(torch.tensor(class_ids), minlength=labels.classes)
    head = MarginHead(
        model.embedding_size,
        labels.classes,
        cfg.head,
        class_counts=counts,
        num_species=len(labels.species) if cfg.head.species_weight > 0 else 0,
    )
    trainee = Trainee(model, head, autocast=cuda and cfg.optim.amp).to(device)
    if cuda:
        trainee = trainee.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if dist.enabled and cuda and cfg.optim.sync_bn:
        trainee = nn.SyncBatchNorm.convert_sync_batchnorm(trainee)  # type: ignore[assignment]
    optimizer = torch.optim.AdamW(_param_groups(trainee, cfg))
    dataset = PhotoDataset(
        train_photos,
        class_ids,
        [species_code[p.species] for p in train_photos],
        transform,
        padding=cfg.data.box_padding,
        augment=cfg.augment,
        flip_labels=flip_classes(train_photos, labels, cfg.augment),
        seed=cfg.seed,
    )
    sampler = GlobalBatchSampler(
        len(dataset),
        cfg.optim.batch_size,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    return _Session(
        cfg=cfg,
        run=run,
        dist=dist,
        device=device,
        transform=transform,
        trainee=trainee,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, len(sampler))),
        scaler=torch.amp.GradScaler("cuda", enabled=cuda and cfg.optim.amp),
        dataset=dataset,
        sampler=sampler,
        loader=DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=cuda),
    )


def _resume(session: _Session) -> None:
    """Model, head, optimiser, schedule and scaler as the last checkpoint left them."""
    path = session.run.checkpoint_path("last")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    session.trainee.model.load_state_dict(checkpoint["model"])
    session.trainee.head.load_state_dict(checkpoint["head"])
    session.optimizer.load_state_dict(checkpoint["optimizer"])
    session.scheduler.load_state_dict(checkpoint["scheduler"])
    session.scaler.load_state_dict(checkpoint["scaler"])
    session.start_epoch, session.best = checkpoint["epoch"] + 1, checkpoint["best"]


def _train_epoch(session: _Session, wrapped: nn.Module, epoch: int) -> dict[str, Any]:
    """One pass over this process's share of the data; returns the epoch's metrics record
    (loss and throughput summed over every process)."""
    cfg, dist, device = session.cfg, session.dist, session.device
    session.dataset.set_epoch(epoch)
    session.sampler.set_epoch(epoch)
    wrapped.train()
    if cfg.optim.freeze_bn:
        _freeze_bn(wrapped)
    params = session.params
    loss_sum, seen, started = 0.0, 0, time.perf_counter()
    bar = tqdm(
        session.loader,
        desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
        disable=not dist.is_main,
        leave=False,
        dynamic_ncols=True,
    )
    for x, y, s in bar:
        x, y, s = x.to(device, non_blocking=True), y.to(device), s.to(device)
        if session.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = wrapped(x, y, s)
        session.optimizer.zero_grad(set_to_none=True)
        session.scaler.scale(loss).backward()
        if cfg.optim.clip_grad:
            session.scaler.unscale_(session.optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        session.scaler.step(session.optimizer)
        session.scaler.update()
        session.scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        rate = seen * dist.world_size / (time.perf_counter() - started)
        lr = session.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
    return {
        "epoch": epoch + 1,
        "loss": dist.sum(loss_sum) / max(1.0, dist.sum(seen)),
        "lr": session.scheduler.get_last_lr()[0],
        "images_per_s": dist.sum(seen) / (time.perf_counter() - started),
    }


def _end_epoch(session: _Session, epoch: int, record: dict[str, Any], *, resumed: bool) -> None:
    """Process 0: evaluate when due, keep the best embedder, checkpoint, log the metrics."""
    cfg, run_dir, trainee = session.cfg, session.run.path, session.trainee
    last_epoch = epoch + 1 == cfg.optim.epochs
    if cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or last_epoch):
        embedded = embed_eval_set(
            trainee.model,
            session.run.open_set_split(),
            session.transform,
            cfg.eval,
            padding=cfg.data.box_padding,
            device=session.device,
        )
        result = sweep(embedded, cfg.eval)
        record.update({k: v for k, v in result.at(result.best_threshold).items()})
    improved = "map5" in record and record["map5"] > session.best
    if improved or cfg.eval.every == 0:
        session.best = record.get("map5", session.best)
        _save_checkpoint(run_dir / runs.EMBEDDER, model=trainee.model.state_dict(), epoch=epoch + 1)
    checkpoint = {
        "epoch": epoch,
        "best": session.best,
        "model": trainee.model.state_dict(),
        "head": trainee.head.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "scaler": session.scaler.state_dict(),
    }
    _save_checkpoint(run_dir / runs.CHECKPOINTS / f"epoch-{epoch + 1:03d}.pt", **checkpoint)
    _save_checkpoint(run_dir / runs.CHECKPOINTS / runs.LAST, **checkpoint)
    records = _append_metrics(run_dir, record, session.start_epoch if resumed else None)
    plot_curves(records, run_dir / runs.CURVES)
    print(json.dumps(record), flush=True)


def evaluate_run(run: Run, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Tune the threshold on the open-set validation with the best embedder (by gallery size,
    and its offsets for encounters of several photos); write evaluation.json, sweep.csv and
    sweep.png; also score the closed-set fold at it."""
    cfg = run.config
    model = run.load_embedder("best").to(device)
    transform = run.transform()

    def embed(eval_set: EvalSet) -> EmbeddedSet:
        return embed_eval_set(
            model, eval_set, transform, cfg.eval, padding=cfg.data.box_padding, device=device
        )

    open_set = run.open_set_split()
    embedded = embed(open_set)
    result = sweep(embedded, cfg.eval)
    evaluation: dict[str, Any] = {**summary(result, open_set), "flip_tta": cfg.eval.flip_tta}
    evaluation["threshold_curve"] = threshold_curve(embedded, result, cfg.eval, seed=cfg.seed)
    evaluation["encounter_offsets"] = encounter_offsets(embedded, result, cfg.eval, seed=cfg.seed)
    closed = run.closed_set_split()
    if closed.queries:
        closed_scores = score_at(embed(closed), result.best_threshold, cfg.eval)
        evaluation["closed_set"] = {**closed_scores, "queries": len(closed.queries)}
    epoch = torch.load(run.checkpoint_path("best"), map_location="cpu", weights_only=True)["epoch"]
    evaluation["epoch"] = epoch
    (run.path / runs.EVALUATION).write_text(json.dumps(evaluation, indent=1) + "\n")
    write_sweep_csv(result, run.path / runs.SWEEP_CSV)
    plot_sweep(result, run.path / runs.SWEEP_PNG, title=f"open-set validation, {run.path.name}")
    return evaluation
