"""timm CNNs exported in the test run (random weights): the bench's PyTorch peer is the exported
model, and channel counts no vector width divides (GhostNet's, ReXNet's) keep one layout."""

import numpy as np
import onnxruntime as ort
import pytest

from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph
from woodpecker.graph.passes.layout import block_layout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """timm:<name> exported once per test module."""
    pytest.importorskip("timm")
    from woodpecker.models import export_model

    folder = tmp_path_factory.mktemp("timm")
    return lambda name: export_model(f"timm:{name}", folder / f"{name}.onnx")


@pytest.fixture(scope="module")
def ghostnet(exported):
    return exported("ghostnet_100")


def test_the_pytorch_peer_is_the_exported_model(ghostnet, rng):
    import torch

    from woodpecker.models import build_pytorch, exported_name, pytorch_source

    assert exported_name(ghostnet) == "ghostnet_100" and pytorch_source(ghostnet) == "timm:ghostnet_100"
    model, names = build_pytorch(pytorch_source(ghostnet))
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        actual = model(torch.from_numpy(x)).numpy()
    expected = ort.InferenceSession(str(ghostnet), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert names is None and np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnet_050", "rexnet_100", "regnety_016"])
@pytest.mark.parametrize("block", [16, 8])
def test_cnns_whose_channels_no_block_divides_keep_one_layout(exported, name, block):
    """No conversion at all (AVX-512's 16 and AVX2's 8 lanes): GhostNet's 12 and 20 channels in
    quarter blocks, GhostNet-050's 6 and 18 and ReXNet's 38 and 61 plain between kernels that read
    and write both layouts, RegNetY-016's groups of 24 in blocks of 8."""
    graph = block_layout(optimize_graph(import_model(exported(name), 1)), block)
    assert [n.op for n in graph.nodes].count("Relayout") == 0


def test_an_unknown_timm_model_is_one_line(tmp_path):
    from woodpecker.errors import WoodpeckerError
    from woodpecker.models import export_model

    with pytest.raises(WoodpeckerError, match="timm has no model 'no_such_net'"):
        export_model("timm:no_such_net", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
