"""Hugging Face transformers exported in the test run (small configs, random weights): import,
optimize, and match ONNX Runtime on random token ids, padded attention masks and images."""

import numpy as np
import onnxruntime as ort
import pytest

import woodpecker
from woodpecker.explore.verify import index_bounds, random_feeds
from woodpecker.graph.onnx_import import import_model
from woodpecker.graph.passes import optimize_graph

pytestmark = pytest.mark.slow
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
MODELS = {
    "bert": dict(SMALL, vocab_size=300, max_position_embeddings=64),
    "distilbert": {"dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128, "vocab_size": 300},
    "vit": dict(SMALL, image_size=32, patch_size=8),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("transformers")
    from woodpecker.models import export_transformers

    directory = tmp_path_factory.mktemp("transformers")
    return {
        name: export_transformers(name, directory / f"{name}.onnx", seq=24, **config) for name, config in MODELS.items()
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformer_imports_and_folds_its_mask_arithmetic(name, exported):
    graph = optimize_graph(import_model(exported[name]))
    # Shape arithmetic (Shape, Gather, Range, ConstantOfShape, Expand, GatherElements on constants) is gone.
    ops = {node.op for node in graph.nodes}
    assert not ops & {"Shape", "ConstantOfShape", "Range", "GatherElements"}, ops
    assert "Cast" not in {n.op for n in graph.nodes if graph.values[n.inputs[0]].dtype == "float32"}


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_transformer_plan_matches_onnxruntime(name, exported, records_path, tmp_path):
    plan = woodpecker.optimize(exported[name], budget=1, records=records_path, progress=False)
    if name == "vit":
        assert plan.meta["summary"]["fallback"] == 0
    plan.save(tmp_path / "plan")
    loaded = woodpecker.load(tmp_path / "plan")
    session = ort.InferenceSession(str(exported[name]), providers=["CPUExecutionProvider"])
    bounds = index_bounds(plan.graph)
    if name == "bert":
        assert bounds == {"input_ids": MODELS["bert"]["vocab_size"]}
    outputs = []
    for seed in (11, 12):
        feeds = random_feeds(loaded.input_specs, seed, bounds)
        if "attention_mask" in feeds:  # a padded batch: the last tokens masked
            feeds["attention_mask"][:] = 1
            feeds["attention_mask"][:, -5 - seed % 3 :] = 0
        actual, expected = loaded.run(feeds)["output"], session.run(None, feeds)[0]
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
        outputs.append((actual, expected))
    (a1, e1), (a2, e2) = outputs
    assert np.abs((a1 - a2) - (e1 - e2)).max() <= 1e-3 * np.abs(e1 - e2).max()


def test_export_of_an_unknown_model_type_is_one_line(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "woodpecker.cli", "export", "hf:no-such-model", "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no model type 'no-such-model'" in result.stderr and not target.exists()


@pytest.mark.parametrize("name", ["distilbert", "vit"])
def test_the_pytorch_peer_is_the_exported_model(name, exported):
    """The bench's PyTorch peers build the model from the file's metadata: the same config and
    weights as the export, so they time what the plan computes."""
    import torch

    from woodpecker.models import build_pytorch, pytorch_source

    model, names = build_pytorch(pytorch_source(exported[name]))
    session = ort.InferenceSession(str(exported[name]), providers=["CPUExecutionProvider"])
    specs = {i.name: (tuple(i.shape), "int64" if "int64" in i.type else "float32") for i in session.get_inputs()}
    feeds = random_feeds(specs, 3, {"input_ids": 300})
    assert names == list(feeds)
    with torch.inference_mode():
        actual = model(*[torch.from_numpy(feeds[n]) for n in names]).numpy()
    expected = session.run(None, feeds)[0]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_bench_feeds_the_peers_token_ids(exported):
    """Each peer gets int64 token ids below the vocabulary and a 0/1 mask, as the plan does."""
    from woodpecker.bench import BenchSettings, bench

    settings = BenchSettings(warmup=1, runs=2, min_seconds=0.0, rounds=1)
    report = bench(exported["bert"], ["onnxruntime", "torch"], settings)
    assert [(r["runtime"], r.get("error")) for r in report["results"]] == [("onnxruntime", None), ("torch", None)]


def test_config_fields_in_the_model_name(tmp_path):
    """`hf:<type>:field=value,...` sets config fields (a DeiT-tiny-sized ViT); an unknown field is one error."""
    from woodpecker.errors import WoodpeckerError
    from woodpecker.models import export_model, pytorch_source

    path = export_model(
        "hf:vit:hidden_size=32,num_hidden_layers=1,intermediate_size=64,image_size=32", tmp_path / "v.onnx"
    )
    assert '"hidden_size": 32' in pytorch_source(path) and '"image_size": 32' in pytorch_source(path)
    with pytest.raises(WoodpeckerError, match="the vit config has no field 'hidden_sise'"):
        export_model("hf:vit:hidden_sise=32", tmp_path / "w.onnx")
    with pytest.raises(WoodpeckerError, match="is not field=value"):
        export_model("hf:vit:hidden_size", tmp_path / "w.onnx")
    assert not (tmp_path / "w.onnx").exists()
