"""Export torchvision, timm and Hugging Face transformers models (random weights, nothing from a hub) to ONNX."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from woodpecker.errors import WoodpeckerError
from woodpecker.output_files import umask

TORCHVISION_KEY = "woodpecker.torchvision_model"
TIMM_KEY = "woodpecker.timm_model"
TRANSFORMERS_KEY = "woodpecker.transformers_model"
TRANSFORMERS_CONFIG_KEY = "woodpecker.transformers_config"  # the fields that differ from the default config
HF_PREFIX = "hf:"  # model names of Hugging Face transformers (`wpk export hf:bert`)
TIMM_PREFIX = "timm:"  # model names of timm (`wpk export timm:ghostnet_100`)
KNOWN_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16", "squeezenet1_1")


def export_torchvision(name: str, path: str | Path, batch: int = 1, opset: int = 17, seed: int = 0) -> Path:
    """Write `torchvision.models.<name>(weights=None)` as ONNX with a dynamic batch dimension."""
    import torch
    import torchvision

    if not hasattr(torchvision.models, name):
        raise WoodpeckerError(f"torchvision has no model '{name}' (try one of {', '.join(KNOWN_MODELS)})")
    torch.manual_seed(seed)
    model = _nonzero(getattr(torchvision.models, name)(weights=None).eval())
    return _export(
        model,
        (torch.randn(batch, 3, 224, 224),),
        ["input"],
        path,
        opset,
        {"input": {0: "batch"}, "output": {0: "batch"}},
        {TORCHVISION_KEY: name},
    )


def export_timm(name: str, path: str | Path, opset: int = 17, seed: int = 0) -> Path:
    """Write `timm.create_model(name, pretrained=False)` as ONNX with a dynamic batch dimension, at
    the input size of the model's default configuration."""
    import torch

    model = build_timm(name, seed)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    dynamic = {"input": {0: "batch"}, "output": {0: "batch"}}
    return _export(model, (torch.randn(1, *size),), ["input"], path, opset, dynamic, {TIMM_KEY: name})


def build_timm(name: str, seed: int = 0):
    """The timm model with random weights (none all zero), in inference mode."""
    import timm
    import torch

    if name not in timm.list_models():
        raise WoodpeckerError(f"timm has no model '{name}' (e.g. ghostnet_100, cspresnet50, poolformer_s12)")
    torch.manual_seed(seed)
    return _nonzero(timm.create_model(name, pretrained=False).eval())


def export_transformers(
    model_type: str, path: str | Path, seq: int = 128, opset: int = 17, seed: int = 0, **config: object
) -> Path:
    """Write a Hugging Face `transformers` model built from its default config (`model_type` as in
    `AutoConfig.for_model`: "bert", "distilbert", "vit", ...; `config` overrides fields) with random
    weights as ONNX: its last hidden state for `input_ids` and `attention_mask` (1 x seq, int64), or
    for `pixel_values` when the config describes images."""
    import torch

    model, names, settings = build_transformers(model_type, seed, **config)
    if names == ["pixel_values"]:
        size = settings.image_size
        args = (torch.randn(1, settings.num_channels, size, size),)
    else:
        mask = torch.ones(1, seq, dtype=torch.int64)
        mask[:, seq - seq // 4 :] = 0  # padding at the end, as a tokenizer leaves it
        args = (torch.randint(0, settings.vocab_size, (1, seq)), mask)
    props = {TRANSFORMERS_KEY: model_type, TRANSFORMERS_CONFIG_KEY: json.dumps(config, sort_keys=True)}
    return _export(model, args, names, path, opset, None, props)


def build_transformers(model_type: str, seed: int = 0, **config: object):
    """(module, input names, config): the model's last hidden state as a module called with its inputs
    in the order of the names, random weights (none all zero)."""
    import torch
    import transformers

    try:
        settings = transformers.AutoConfig.for_model(model_type, **config)
    except ValueError:
        raise WoodpeckerError(
            f"transformers has no model type '{model_type}' (e.g. bert, distilbert, roberta, vit, deit)"
        ) from None
    unknown = [key for key in config if not hasattr(transformers.AutoConfig.for_model(model_type), key)]
    if unknown:  # the config would keep them as unused attributes
        raise WoodpeckerError(f"the {model_type} config has no field {', '.join(map(repr, unknown))}")
    torch.manual_seed(seed)
    model = _nonzero(transformers.AutoModel.from_config(settings).eval())
    names = ["pixel_values"] if hasattr(settings, "image_size") else ["input_ids", "attention_mask"]
    return _last_hidden_state(model, names), names, settings


def export_model(name: str, path: str | Path, seq: int = 128) -> Path:
    """`export_transformers` for `hf:<model_type>[:field=value,...]` (config fields: `hf:vit:hidden_size=192`),
    `export_timm` for `timm:<name>`, else `export_torchvision`."""
    if name.startswith(HF_PREFIX):
        model_type, _, fields = name[len(HF_PREFIX) :].partition(":")
        return export_transformers(model_type, path, seq=seq, **_config_fields(fields))
    if name.startswith(TIMM_PREFIX):
        return export_timm(name[len(TIMM_PREFIX) :], path)
    return export_torchvision(name, path)


def _config_fields(text: str) -> dict[str, object]:
    """`a=1,b=gelu` as {"a": 1, "b": "gelu"}: numbers and true/false parsed as JSON, the rest strings."""
    fields: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise WoodpeckerError(f"config field '{item}' is not field=value (e.g. hf:vit:hidden_size=192)")
        try:
            fields[key.strip()] = json.loads(value)
        except ValueError:
            fields[key.strip()] = value
    return fields


def pytorch_source(model_path: str | Path) -> str | None:
    """What the PyTorch peers build for a model exported here: its torchvision name, `timm:` and its
    timm name, or for a transformers model `hf:` and a JSON object of its type and config fields;
    None for other files."""
    name = torchvision_name(model_path)
    if name is not None:
        return name
    name = _exported_as(model_path, (TIMM_KEY,))
    if name is not None:
        return TIMM_PREFIX + name
    model_type = _exported_as(model_path, (TRANSFORMERS_KEY,))
    if model_type is None:
        return None
    config = json.loads(_exported_as(model_path, (TRANSFORMERS_CONFIG_KEY,)) or "{}")
    return HF_PREFIX + json.dumps({"model_type": model_type, "config": config})


def build_pytorch(source: str):
    """(module, input names or None for one input) from `pytorch_source`'s description."""
    if source.startswith(HF_PREFIX):
        described = json.loads(source[len(HF_PREFIX) :])
        model, names, _ = build_transformers(described["model_type"], **described["config"])
        return model, names
    if source.startswith(TIMM_PREFIX):
        return build_timm(source[len(TIMM_PREFIX) :]), None
    import torchvision

    return getattr(torchvision.models, source)(weights=None).eval(), None


def _last_hidden_state(model, names: list[str]):
    """`model` called by keyword (the positional order differs by model), returning its last hidden state."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(names, args))).last_hidden_state

    return LastHiddenState().eval()


def _nonzero(model):
    """A zero-initialized layer (ViT's classifier) would make every output 0: such weights drawn small."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.02)
    return model


def _export(model, args: tuple, names: list[str], path: str | Path, opset: int, dynamic, props: dict) -> Path:
    """torch.onnx.export to a temporary file beside `path`, then moved into place (never half-written)."""
    import onnx
    import torch

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
                args,
                str(tmp),
                opset_version=opset,
                dynamo=False,
                input_names=names,
                output_names=["output"],
                dynamic_axes=dynamic,
            )
        if props:
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, props)
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
    return _exported_as(model_path, (TORCHVISION_KEY,))


def exported_name(model_path: str | Path) -> str | None:
    """The model an ONNX file was exported from by an exporter here, if any."""
    return _exported_as(model_path, (TORCHVISION_KEY, TIMM_KEY, TRANSFORMERS_KEY))


def _exported_as(model_path: str | Path, keys: tuple[str, ...]) -> str | None:
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # protobuf raises several unrelated types
        return None
    return next((p.value for p in proto.metadata_props if p.key in keys), None)
