"""The embedder: GeM against the generalised mean written out, and any timm backbone by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.preprocess import IMAGENET_MEAN, IMAGENET_STD, EmbedTransform
from gallery.errors import WhaleidError
from training.model import EmbeddingModel, GeM, ModelConfig, build_model
from training.pretrained import LITE_MEAN, LITE_STD


@pytest.mark.parametrize("p", [1.0, 2.5, 3.0, 6.0])
def test_gem_is_the_generalised_mean(p: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 4.0, size=(2, 5, 3, 4))
    x[0, 0, 0, 0] = -1.0  # negative activations count as eps (GeM is for non-negative maps)
    pooled = GeM(p=p)(torch.from_numpy(x).float()).detach().numpy()
    xc = np.maximum(x, 1e-6)
    want = np.mean(xc**p, axis=(2, 3)) ** (1.0 / p)
    assert pooled.shape == (2, 5)
    np.testing.assert_allclose(pooled, want, rtol=1e-5)
    if p == 1.0:
        np.testing.assert_allclose(pooled, xc.mean(axis=(2, 3)), rtol=1e-5)


def test_gem_p_is_learnable_or_fixed() -> None:
    gem = GeM(p=3.0)
    assert isinstance(gem.p, torch.nn.Parameter)
    x = torch.rand(2, 4, 5, 5) + 0.1
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0

    fixed = GeM(p=3.0, learnable=False)
    assert not list(fixed.parameters()) and "p" in dict(fixed.named_buffers())


def test_gem_pools_fp16_input_in_fp32() -> None:
    x = torch.full((1, 2, 4, 4), 100.0, dtype=torch.float16)  # 100^3 overflows fp16
    out = GeM(p=3.0)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((1, 2), 100.0), rtol=1e-4, atol=1e-3)


# One CNN family each, a headless tiny EfficientNet, a ViT (token output) and an NHWC model:
# the same code path for all, picked by name only.
@pytest.mark.parametrize(
    ("backbone", "size"),
    [
        ("resnet18", 64),
        ("tf_efficientnet_lite0", 64),
        ("test_efficientnet", 64),
        ("test_vit", 160),
        ("test_mambaout", 64),
    ],
)
def test_any_timm_backbone_by_name(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, embedding_size=24))
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.embedding_size == 24
    assert model.neck[-1].in_features == model.num_features
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 24)


def test_neck_order_and_not_normalised() -> None:
    model = EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_size=16))
    kinds = [type(m).__name__ for m in model.neck]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear"]
    # the head normalises; the embedder itself does not
    out = model(torch.randn(3, 3, 64, 64))
    assert not torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-2)
    # the exported module has no class centres
    assert not any(
        "weight" in n and p.ndim == 2 and p.shape[0] > 1000 for n, p in model.named_parameters()
    )


def test_transform_records_the_normalisation_of_the_weights() -> None:
    resnet = EmbeddingModel(ModelConfig(backbone="resnet18"))
    t = resnet.transform((96, 128))
    assert isinstance(t, EmbedTransform)
    assert t.input_size == (96, 128)
    assert t.mean == pytest.approx(IMAGENET_MEAN) and t.std == pytest.approx(IMAGENET_STD)

    lite = EmbeddingModel(ModelConfig(pretrained="efficientnet-lite"))  # no loading here
    t = lite.transform((224, 224))
    assert t.mean == pytest.approx(LITE_MEAN) and t.std == pytest.approx(LITE_STD)
    # (x·255 − 127) / 128, TF's Lite preprocessing
    assert (np.float32(200 / 255) - t.mean[0]) / t.std[0] == pytest.approx((200 - 127) / 128)
    assert lite.transform().input_size == (224, 224)


def test_config_errors_name_the_option() -> None:
    with pytest.raises(WhaleidError, match=r"model\.backbone"):
        EmbeddingModel(ModelConfig(backbone="no_such_net"))
    with pytest.raises(ValueError, match="extra"):
        ModelConfig.model_validate({"backbone": "resnet18", "neck": "bn"})


def test_frozen_stages_keep_their_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="test_efficientnet", embedding_size=16, freeze_stages=1)
    )
    frozen = {id(p) for m in model.frozen for p in m.parameters()}
    assert frozen and {id(p) for p in model.backbone.conv_stem.parameters()} <= frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable}.isdisjoint(frozen)
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 64, 64)).pow(2).sum().backward()
        optimizer.step()
    after = model.state_dict()
    frozen_names = {
        f"backbone.{name}.{key}"
        for m in model.frozen
        for name, sub in model.backbone.named_modules()
        if sub is m
        for key in m.state_dict()
    }
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert frozen_names and changed.isdisjoint(frozen_names)  # weights and running statistics
    assert any(k.startswith("backbone.blocks.") for k in changed)  # the rest does learn
    assert all(not m.training for m in model.frozen) and model.neck.training


def test_freezing_every_stage_is_refused() -> None:
    with pytest.raises(WhaleidError, match="freeze_stages"):
        EmbeddingModel(ModelConfig(backbone="test_efficientnet", freeze_stages=99))
