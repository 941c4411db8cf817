"""`whaleid synth`: reproducible bytes, honest boxes, identity in marks (not colour), the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from training.synth import make_catalogue
from training.synth.render import fin_texture
from training.synth.shapes import make_species
from training.synth.writer import SIDES, encode_jpeg, individual, render, textures

SPEC = ["--individuals", "40", "--photos", "6", "--species", "3"]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def spec_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogue from the issue's command line: 40 individuals × 6 photos, 3 species, seed 7."""
    out = tmp_path_factory.mktemp("synth") / "c1"
    assert main(["synth", "--out", str(out), *SPEC, "--seed", "7", "--quiet"]) == 0
    return out


def test_same_seed_gives_byte_identical_trees(spec_catalogue: Path, tmp_path: Path) -> None:
    c2, c3 = tmp_path / "c2", tmp_path / "c3"
    assert main(["synth", "--out", str(c2), *SPEC, "--seed", "7", "--quiet"]) == 0
    first, second = _tree(spec_catalogue), _tree(c2)
    assert len(first) == 240 * 2 + 3  # images, labels, train.csv, boxes.csv, synth.json
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []

    assert main(["synth", "--out", str(c3), *SPEC, "--seed", "8", "--quiet"]) == 0
    third = _tree(c3)
    assert third["train.csv"] != first["train.csv"]
    shared = {k for k in third.keys() & first.keys() if k.startswith("images/")}
    assert shared == set(), "photo names depend on the seed"


def test_catalogue_layout(spec_catalogue: Path) -> None:
    rows = _rows(spec_catalogue / "train.csv")
    assert list(rows[0]) == ["image", "species", "individual_id"]
    assert len(rows) == 240
    ids = {r["individual_id"] for r in rows}
    assert len(ids) == 40 and all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    assert all(re.fullmatch(r"[0-9a-f]{12}\.jpg", r["image"]) for r in rows)
    assert {r["species"] for r in rows} == {"bottlenose_dolphin", "killer_whale", "humpback_whale"}
    per_id: dict[str, set[str]] = {}
    for r in rows:
        per_id.setdefault(r["individual_id"], set()).add(r["species"])
    assert all(len(s) == 1 for s in per_id.values()), "an individual has one species"
    params = json.loads((spec_catalogue / "synth.json").read_text())
    assert (
        params["seed"] == 7 and params["individuals"] == 40 and params["image_size"] == [512, 384]
    )


def test_boxes_lie_inside_images_and_agree_across_formats(spec_catalogue: Path) -> None:
    boxes = {r["image"]: r for r in _rows(spec_catalogue / "boxes.csv")}
    rows = _rows(spec_catalogue / "train.csv")
    assert set(boxes) == {r["image"] for r in rows}
    for name, b in boxes.items():
        with Image.open(spec_catalogue / "images" / name) as im:
            w, h = im.size
            assert im.format == "JPEG" and (w, h) == (512, 384)
        x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        # Fins are 15-70% of the frame's height; a box clipped at the edge keeps most of its fin.
        assert 0.1 * h <= y2 - y1 <= 0.9 * h
        label = (spec_catalogue / "labels" / f"{Path(name).stem}.txt").read_text().split()
        assert label[0] == "0" and len(label) == 5
        xc, yc, bw, bh = (float(v) for v in label[1:])
        assert xc * w == pytest.approx((x1 + x2) / 2, abs=0.1)
        assert yc * h == pytest.approx((y1 + y2) / 2, abs=0.1)
        assert bw * w == pytest.approx(x2 - x1, abs=0.1)
        assert bh * h == pytest.approx(y2 - y1, abs=0.1)


def test_boxes_are_the_fin_silhouettes_bounding_box(spec_catalogue: Path) -> None:
    """Re-render photos from their (seed, individual, photo) keys alone: the JPEG bytes must be
    the ones on disk (so the masks we check are those photos' masks, and nothing depends on the
    order photos are made in), and each box must be the tight bounding box of the fin's whole
    silhouette (its mask before occlusion), clipped to the frame."""
    kinds = make_species(3)
    boxes = {r["image"]: r for r in _rows(spec_catalogue / "boxes.csv")}
    clipped = 0
    # Individuals taken backwards and out of order, to show order does not matter.
    for i in (39, 17, 4, 0):
        tex = fin_texture(individual(7, i, kinds))
        for j in range(6):
            name, photo = render(7, i, j, tex, (512, 384))
            assert encode_jpeg(photo.image) == (spec_catalogue / "images" / name).read_bytes()
            b = boxes[name]
            x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
            ys, xs = np.nonzero(photo.fin_mask > 0.5)
            assert len(xs) > 100
            # Every fin pixel lies in the box (1 px for antialiasing and the CSV's rounding)...
            assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
            assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
            # ...and the fin reaches all four sides of it: the box is tight.
            assert xs.min() <= x1 + 1.5 and xs.max() + 1 >= x2 - 1.5
            assert ys.min() <= y1 + 1.5 and ys.max() + 1 >= y2 - 1.5
            clipped += x1 == 0 or y1 == 0 or x2 == 512 or y2 == 384
    assert clipped < 24 // 2


def test_mean_colour_does_not_identify(spec_catalogue: Path) -> None:
    """Identity must be carried by silhouette and marks. If photos of one individual shared a
    colour (its own skin tone, a favourite background), a model could score well by learning
    colour and would fail on real photos. So a leave-one-out nearest-class-mean classifier on
    each photo's mean RGB must stay near chance (1/40 here); we allow up to 3× chance for the
    noise of 240 photos."""
    rows = _rows(spec_catalogue / "train.csv")
    feats = np.array(
        [
            np.asarray(Image.open(spec_catalogue / "images" / r["image"]), dtype=np.float64)
            .reshape(-1, 3)
            .mean(axis=0)
            for r in rows
        ]
    )
    labels = np.array([r["individual_id"] for r in rows])
    classes = sorted(set(labels))
    correct = 0
    for k in range(len(rows)):
        keep = np.arange(len(rows)) != k
        means = np.array([feats[keep & (labels == c)].mean(axis=0) for c in classes])
        guess = classes[int(np.argmin(((means - feats[k]) ** 2).sum(axis=1)))]
        correct += guess == labels[k]
    chance = 1 / len(classes)
    assert correct / len(rows) < 3 * chance, f"mean colour identifies {correct}/{len(rows)}"


def test_fixture_catalogue_api(catalogue: Path) -> None:
    """The session catalogue other tests train on: 160 × 5 photos at 512×384, 3 species."""
    rows = _rows(catalogue / "train.csv")
    assert len(rows) == 160 * 5 and len({r["individual_id"] for r in rows}) == 160
    assert len({r["species"] for r in rows}) == 3
    with Image.open(catalogue / "images" / rows[0]["image"]) as im:
        assert im.size == (512, 384)
    assert len(list((catalogue / "labels").glob("*.txt"))) == 160 * 5


def test_make_catalogue_summary_and_species_names(tmp_path: Path) -> None:
    s = make_catalogue(
        tmp_path / "c", individuals=11, photos=1, species=11, seed=0, image_size=(64, 48)
    )
    assert (s.individuals, s.photos, s.image_size) == (11, 11, (64, 48))
    assert len(set(s.species)) == 11 and s.species[9].endswith("_2")
    assert s.train_csv.is_file() and s.boxes_csv.is_file() and s.images_dir.is_dir()


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--out", "--individuals", "--photos", "--species", "--seed", "--overwrite"):
        assert word in text
    assert "train.csv" in text and "YOLO" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--photos", "0"], "--photos must be at least 1"),
        (["--individuals", "-3"], "--individuals must be at least 1"),
        (["--species", "5", "--individuals", "2"], "--species (5) cannot exceed --individuals"),
        (["--seed", "-1"], "--seed"),
        (["--sides", "3"], "--sides"),
        (["--speckles", "-1"], "--speckles"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path / "c"), *args, "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("whaleid synth: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "c").exists(), "nothing is written for bad arguments"


def test_non_empty_out_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    small = ["--individuals", "2", "--photos", "1", "--species", "1", "--size", "64x48", "--quiet"]
    assert main(["synth", "--out", str(out), *small]) == 1
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and str(out) in err and "\n" not in err
    assert main(["synth", "--out", str(out), *small, "--overwrite"]) == 0
    # --overwrite replaces the catalogue's own files and nothing else.
    assert (out / "notes.txt").read_text() == "mine"
    assert len(_rows(out / "train.csv")) == 2
    (out / "images" / "stale.jpg").write_bytes(b"x")
    assert main(["synth", "--out", str(out), *small, "--overwrite"]) == 0
    assert not (out / "images" / "stale.jpg").exists()


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = ["--individuals", "3", "--photos", "2", "--species", "1", "--size", "64x48"]
    assert main(["synth", "--out", str(tmp_path / "c"), *small]) == 0
    captured = capsys.readouterr()
    assert "6/6" in captured.err and "100%" in captured.err  # tqdm writes to stderr
    assert "wrote 6 photos of 3 individuals" in captured.out


def test_two_sided_catalogue_has_viewpoints(tmp_path: Path) -> None:
    small = ["--individuals", "6", "--photos", "4", "--species", "2", "--size", "128x96"]
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    for out in (c1, c2):
        assert main(["synth", "--out", str(out), *small, "--sides", "2", "--quiet"]) == 0
    assert _tree(c1) == _tree(c2)
    rows = _rows(c1 / "train.csv")
    assert list(rows[0]) == ["image", "species", "individual_id", "viewpoint"]
    by_individual: dict[str, list[str]] = {}
    for r in rows:
        by_individual.setdefault(r["individual_id"], []).append(r["viewpoint"])
    # Photos alternate faces: every animal is seen twice from each side.
    assert all(sorted(v) == ["left", "left", "right", "right"] for v in by_individual.values())
    assert json.loads((c1 / "synth.json").read_text())["sides"] == 2


def test_a_fins_two_faces_share_the_outline_not_the_marks() -> None:
    kinds = make_species(3)
    for index in range(5):
        ind = individual(0, index, kinds)
        (near, far), first = textures(0, index, ind, sides=2)
        assert first in (0, 1) and len(SIDES) == 2
        shade_near, alpha_near, _ = (np.asarray(c, dtype=np.float32) for c in near.image.split())
        shade_far, alpha_far, _ = (np.asarray(c, dtype=np.float32) for c in far.image.split())
        # The far face is the near face's silhouette seen from behind: mirrored...
        assert np.abs(alpha_far - alpha_near[:, ::-1]).mean() < 1.0
        # ...with skin marks of its own (scars and pigment differ, not mirror images).
        fin = alpha_near[:, ::-1] > 128
        assert np.abs(shade_far - shade_near[:, ::-1])[fin].mean() > 2.0
        # One-sided catalogues draw the near face exactly as before sides existed.
        (only,), zero = textures(0, index, ind, sides=1)
        assert zero == 0 and np.array_equal(np.asarray(only.image), np.asarray(near.image))


def test_speckles_add_fine_marks_to_every_face_and_nothing_else() -> None:
    kinds = make_species(1)
    ind = individual(0, 0, kinds)
    plain, first = textures(0, 0, ind, sides=2)
    speckled, again = textures(0, 0, ind, sides=2, speckles=60)
    assert again == first
    for before, after in zip(plain, speckled, strict=True):
        shade_b, alpha_b, back_b = (np.asarray(c, dtype=np.int16) for c in before.image.split())
        shade_a, alpha_a, back_a = (np.asarray(c, dtype=np.int16) for c in after.image.split())
        # The silhouette (and so the box) and the back stay; only the fin's skin changes...
        assert np.array_equal(alpha_a, alpha_b) and np.array_equal(back_a, back_b)
        changed = np.abs(shade_a - shade_b) > 20
        # ...in many small marks: a few percent of the fin, not a patch over it.
        share = changed[alpha_b > 128].mean()
        assert 0.003 < share < 0.1, share
    # The two faces are speckled differently (their own stream each).
    near = np.asarray(speckled[0].image.split()[0], np.int16) - np.asarray(
        plain[0].image.split()[0], np.int16
    )
    far = np.asarray(speckled[1].image.split()[0], np.int16) - np.asarray(
        plain[1].image.split()[0], np.int16
    )
    assert not np.array_equal(near != 0, (far != 0)[:, ::-1])


def test_speckles_are_recorded(tmp_path: Path) -> None:
    make_catalogue(tmp_path / "c", individuals=2, photos=1, species=1, seed=0, speckles=5)
    assert json.loads((tmp_path / "c" / "synth.json").read_text())["speckles"] == 5
