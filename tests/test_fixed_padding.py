"""Fixing a tf_ backbone's "same" padding for one input size: the same outputs as the model as
trained, at sizes whose feature maps go odd (80 px: 5 pixels before the last strided conv,
where onnxslim's shape folding got the pads wrong), and a lean exported graph: no per-photo shape
arithmetic, the pads in the convs, onnxslim's result kept only where it answers as exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from timm.layers import Conv2dSame  # noqa: E402

from app.embedder import INPUT_NAME  # noqa: E402
from app.sessions import open_session  # noqa: E402
from training.config import ModelConfig  # noqa: E402
from training.export import export_embedder  # noqa: E402
from training.fixed_padding import FixedPadConv2d, fix_same_padding  # noqa: E402
from training.graph_slim import slimmed  # noqa: E402
from training.model import build_model  # noqa: E402


def _lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="tf_efficientnet_lite0", embedding_size=16)).eval()


@pytest.mark.parametrize("size", [(80, 80), (75, 61), (96, 128)])
def test_fixed_pads_answer_as_the_trained_model(size: tuple[int, int]) -> None:
    model = _lite0()
    fixed = fix_same_padding(model, size)
    assert not any(isinstance(m, Conv2dSame) for m in fixed.modules())
    assert sum(isinstance(m, FixedPadConv2d) for m in fixed.modules()) == 5
    # The model handed in is untouched: training and the parity check use it as it is.
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 5
    assert fixed.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), model(x), rtol=0, atol=0)


def test_the_lean_graph_pads_in_its_convs_and_answers_as_torch(tmp_path: Path) -> None:
    model = _lite0()
    export_embedder(model, (80, 80), tmp_path / "fixed.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "fixed.onnx")).graph.node}
    assert "Conv" in ops and not ops & {"Shape", "Gather", "Ceil", "Pad"}
    x = np.random.default_rng(0).standard_normal((4, 3, 80, 80)).astype(np.float32)
    (actual,) = open_session(tmp_path / "fixed.onnx", ["cpu"]).run(None, {INPUT_NAME: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def _exported(tmp_path: Path) -> onnx.ModelProto:
    export_embedder(_lite0(), (80, 80), tmp_path / "exported.onnx", lean=False)
    return onnx.load(str(tmp_path / "exported.onnx"))


def test_a_slim_that_changes_outputs_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxslim

    exported = _exported(tmp_path)
    real_slim = onnxslim.slim

    def wrong_slim(graph: onnx.ModelProto) -> onnx.ModelProto:
        slim = real_slim(graph)
        weight = next(t for t in slim.graph.initializer if t.dims and len(t.dims) == 4)
        doubled = onnx.numpy_helper.to_array(weight) * 2
        weight.CopyFrom(onnx.numpy_helper.from_array(doubled, weight.name))
        return slim

    monkeypatch.setattr(onnxslim, "slim", wrong_slim)
    with pytest.warns(UserWarning, match="changed the graph's outputs"):
        assert slimmed(exported, (80, 80)) is exported


def test_a_slim_that_fails_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxslim

    def failing_slim(graph: onnx.ModelProto) -> onnx.ModelProto:
        raise ValueError("unsupported op")

    exported = _exported(tmp_path)
    monkeypatch.setattr(onnxslim, "slim", failing_slim)
    with pytest.warns(UserWarning, match="could not slim the graph"):
        assert slimmed(exported, (80, 80)) is exported
