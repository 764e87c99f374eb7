"""Shared fixtures: small ONNX graphs built in the test, torchvision exports, a temp records DB.

Tiers: tests marked `slow` (whole models, end-to-end optimizations, fuzzing, subprocesses) are
left out by `scripts/test.sh --fast` (`-m "not slow"`), the inner loop; CI runs them all.
A test that exports a torchvision model is slow by construction.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def records_path(tmp_path):
    return tmp_path / "records.sqlite"


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export torchvision models once per session: name -> path."""
    from woodpecker.models import export_torchvision

    directory = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = export_torchvision(name, directory / f"{name}.onnx")
        return cache[name]

    return get


SLOW_MODULES = ("test_e2e", "test_fuzz", "test_cli", "test_ray", "test_memory")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES or "exported" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
