"""Catalogue loading, configs and splits: the errors a user meets first, and the split rules."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.catalogue import CatalogueError, load_catalogue
from training.config import ConfigError, DataConfig, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def _make(root: Path, individuals: int = 10, photos: int = 10, size: int = 24) -> Path:
    """A throwaway catalogue: `individuals` × `photos` small PNGs."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (root / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id"])
        for i in range(individuals):
            for j in range(photos):
                name = f"i{i:02d}_{j:02d}.png"
                pixels = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / name)
                writer.writerow([name, "dolphin" if i % 2 else "orca", f"ind{i:02d}"])
    return root


def _cfg(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(catalogue=root, **kwargs)  # type: ignore[arg-type]


def test_loads_photos_species_and_individuals(tmp_path: Path) -> None:
    cat = load_catalogue(_cfg(_make(tmp_path, individuals=3, photos=2)))
    assert len(cat.photos) == 6
    assert cat.individuals == ["ind00", "ind01", "ind02"]
    assert cat.species == ["dolphin", "orca"]
    assert cat.unreadable == [] and all(p.box is None for p in cat.photos)


def test_missing_column_is_named(tmp_path: Path) -> None:
    root = _make(tmp_path, individuals=2, photos=2)
    text = (root / "train.csv").read_text().replace("individual_id", "whale")
    (root / "train.csv").write_text(text)
    with pytest.raises(CatalogueError, match="individual_id"):
        load_catalogue(_cfg(root))


def test_missing_csv_and_image_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"train\.csv"):
        load_catalogue(_cfg(tmp_path))
    root = _make(tmp_path / "c", individuals=1, photos=1)
    with pytest.raises(CatalogueError, match="pics"):
        load_catalogue(_cfg(root, images="pics"))


def test_missing_image_files_are_named(tmp_path: Path) -> None:
    root = _make(tmp_path, individuals=2, photos=3)
    (root / "images" / "i01_02.png").unlink()
    with pytest.raises(CatalogueError, match=r"1 photo\(s\).*i01_02\.png"):
        load_catalogue(_cfg(root))


def test_unreadable_photos_skipped_up_to_one_percent(tmp_path: Path) -> None:
    root = _make(tmp_path, individuals=10, photos=10)  # 100 photos
    (root / "images" / "i03_03.png").write_bytes(b"not an image")
    cat = load_catalogue(_cfg(root))
    assert len(cat.photos) == 99
    assert len(cat.unreadable) == 1 and cat.unreadable[0].startswith("i03_03.png")
    (root / "images" / "i04_04.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CatalogueError, match=r"2 of 100 .*i03_03\.png.*i04_04\.png"):
        load_catalogue(_cfg(root))


def test_boxes_from_csv_then_yolo(tmp_path: Path) -> None:
    root = _make(tmp_path, individuals=1, photos=2, size=24)  # photos are 32 × 24
    (root / "labels").mkdir()
    (root / "labels" / "i00_00.txt").write_text("0 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.25 0.25 \n")
    by_name = {p.image: p for p in load_catalogue(_cfg(root)).photos}
    assert by_name["i00_00.png"].box == pytest.approx((8.0, 6.0, 24.0, 18.0))  # the largest
    assert by_name["i00_01.png"].box is None
    (root / "boxes.csv").write_text("image,x1,y1,x2,y2\ni00_01.png,1,2,10,20\n")
    by_name = {p.image: p for p in load_catalogue(_cfg(root)).photos}
    assert by_name["i00_01.png"].box == (1.0, 2.0, 10.0, 20.0)
    assert by_name["i00_00.png"].box is None  # the CSV wins over YOLO labels
    assert all(p.box is None for p in load_catalogue(_cfg(root, use_boxes=False)).photos)


def test_config_unknown_key_is_named(tmp_path: Path) -> None:
    tiny = REPO / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"model\.bakbone: unknown key"):
        load_config(tiny, ["data.catalogue=/x", "model.bakbone=resnet18"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  catalogue: /x\noptim:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"optim\.epoch: unknown key"):
        load_config(bad, [])
    with pytest.raises(ConfigError, match=r"data\.catalogue: required"):
        load_config(tiny, [])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(tiny, ["data.catalogue"])


def test_config_overrides_and_shipped_configs() -> None:
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    cfg = load_config(
        REPO / "configs" / "base.yaml", ["data.catalogue=cat", "head.kind=arcface", "seed=3"]
    )
    assert cfg.model.backbone == "tf_efficientnet_lite0" and cfg.data.image_size == 224
    assert cfg.head.kind == "arcface" and cfg.seed == 3 and cfg.data.catalogue.is_absolute()
    assert cfg.augment.hflip_p == 0.0  # left and right sides of a fin are different patterns
    load_config(REPO / "configs" / "tiny.yaml", ["data.catalogue=cat"])
