"""TensorFlow "same" padding fixed for one input size, for export.

timm's tf_ backbones (EfficientNet-Lite among them) pad their strided convs the TensorFlow way,
from each input's runtime shape (`timm.layers.Conv2dSame`). Traced to ONNX, each such conv
becomes a Shape/Gather/Ceil/Pad chain that runs on every photo. A bundle's embedder takes one
input size, so each of those pads is a constant: `fix_same_padding` replaces every Conv2dSame
with a conv that applies its pads for that size. The arithmetic is the same, so the outputs are
the same, and the exported graph loses the chains. Most of the speed comes next, when
training.graph_slim moves the pads into the convs (bench/steps.py: 1.2-1.4x per call on the
CPU, against 1.04x for the fixed pads alone).

This is done on the torch model rather than on the graph: onnxslim's shape folding, tried
first, gave wrong outputs at 80 px (a 5-pixel feature map), where the parity check caught it.
"""

from __future__ import annotations

import copy

import torch
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FixedPadConv2d", "fix_same_padding"]


class FixedPadConv2d(nn.Conv2d):
    """A Conv2dSame with its pads (left, right, top, bottom) fixed: the same parameters, so the
    same state dict."""

    def __init__(self, conv: Conv2dSame, pads: tuple[int, int, int, int]) -> None:
        kernel: tuple[int, int] = (conv.kernel_size[0], conv.kernel_size[-1])
        stride: tuple[int, int] = (conv.stride[0], conv.stride[-1])
        dilation: tuple[int, int] = (conv.dilation[0], conv.dilation[-1])
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            kernel,
            stride,
            0,
            dilation,
            conv.groups,
            conv.bias is not None,
        )
        self.load_state_dict(conv.state_dict())
        self.pads = pads

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


def fix_same_padding(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """A copy of `model` (in eval mode) whose Conv2dSame layers pad as they would for inputs of
    `input_size` = (height, width), and only for that size; `model` itself is left as it is."""
    fixed = copy.deepcopy(model).eval()
    seen: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _module, args, name=name: seen.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name, module in fixed.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    try:
        with torch.no_grad():
            fixed(torch.zeros(1, 3, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for name, size in seen.items():
        conv = fixed.get_submodule(name)
        assert isinstance(conv, Conv2dSame)
        left, right, top, bottom = (
            int(p)
            for p in pad_same_arg(
                list(size), list(conv.weight.shape[-2:]), list(conv.stride), list(conv.dilation)
            )
        )
        parent, _, attribute = name.rpartition(".")
        owner = fixed.get_submodule(parent) if parent else fixed
        setattr(owner, attribute, FixedPadConv2d(conv, (left, right, top, bottom)))
    return fixed
