"""Export torchvision classification models (random weights, nothing from a hub) to ONNX."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from woodpecker.errors import WoodpeckerError
from woodpecker.output_files import umask

TORCHVISION_KEY = "woodpecker.torchvision_model"
KNOWN_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16", "squeezenet1_1")


def export_torchvision(name: str, path: str | Path, batch: int = 1, opset: int = 17, seed: int = 0) -> Path:
    """Write `torchvision.models.<name>(weights=None)` as ONNX with a dynamic batch dimension."""
    import onnx
    import torch
    import torchvision

    if not hasattr(torchvision.models, name):
        raise WoodpeckerError(f"torchvision has no model '{name}' (try one of {', '.join(KNOWN_MODELS)})")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # a zero-initialized layer (ViT's classifier) would make every output 0
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    # Attention's fused fast path (vision transformers) has no ONNX export: off while exporting.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # The TorchScript exporter is deprecated but gives the classic opset-17 graphs we want.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.randn(batch, 3, 224, 224),),
                str(tmp),
                opset_version=opset,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {TORCHVISION_KEY: name})
        onnx.save(proto, str(tmp))
        tmp.chmod(0o666 & ~umask())
        tmp.replace(path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        tmp.unlink(missing_ok=True)
    return path


def torchvision_name(model_path: str | Path) -> str | None:
    """The torchvision model an ONNX file was exported from by `export_torchvision`, if any (None also
    for a file that is no ONNX model)."""
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # protobuf raises several unrelated types
        return None
    return next((p.value for p in proto.metadata_props if p.key == TORCHVISION_KEY), None)
