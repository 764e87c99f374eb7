"""Winograd 3x3 convolutions (kernels/halide/winograd.py): the transforms, the layers the
kernel claims, and its outputs against ONNX Runtime over tile sizes, strips and edge tiles."""

import numpy as np
import pytest
from test_kernels import assert_kernel_family
from test_layout import conv_workload, with_blocks

from woodpecker.kernels import registry
from woodpecker.kernels.halide.winograd import TRANSFORMS

WINOGRAD = "halide.winograd"


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
def test_transforms_compute_a_correlation(m, rng):
    """Y = A^T [(G g) * (B^T d)] is the valid correlation of a 1-D tile d (m + 2 values) with g (3)."""
    b_t, g, a_t = TRANSFORMS[m]
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    expected = np.array([d[i : i + 3] @ w for i in range(m)])
    np.testing.assert_allclose(a_t @ ((g @ w) * (b_t @ d)), expected, rtol=1e-12, atol=1e-12)


def blocked(workload, in_block, out_block):
    blocks = {"x": in_block, workload.node.outputs[0]: out_block}
    if workload.node.attrs.get("residual"):
        blocks[workload.node.inputs[3]] = out_block
    return with_blocks(workload, blocks)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "epilogue", "in_block", "out_block", "batch"),
    [
        (16, 32, 9, "add_relu", 16, 16, 1),  # residual; 9 rows: the last tile of 4 half outside
        (32, 16, 13, "relu", 8, 8, 2),  # two images, 13 wide (SqueezeNet's)
        (16, 24, 7, "", 16, 8, 1),  # 24 channels in half-vector blocks, 7 wide (ResNet's last layers)
        (48, 64, 16, "relu", 16, 16, 1),  # tiles dividing the image
    ],
)
def test_winograd_matches_onnxruntime(c_in, c_out, size, epilogue, in_block, out_block, batch, rng):
    workload = conv_workload(rng, c_in, c_out, size, 3, 1, 1, epilogue=epilogue, batch=batch)
    workload = blocked(workload, in_block, out_block)
    space = registry.get(WINOGRAD).space(workload)
    configs = [*space.defaults, *space.sample(2, seed=int(rng.integers(1 << 30)))]
    assert {c["tile"] for c in configs} == {2, 4} and {c["parallel"] for c in configs} == {"strips", "inside"}
    assert_kernel_family(workload, WINOGRAD, configs=configs)


@pytest.mark.parametrize(
    ("k", "stride", "pad", "groups"),
    [(1, 1, 0, 1), (3, 2, 1, 1), (3, 1, 0, 1), (3, 1, 1, 2), (3, 1, 1, 32)],
)
def test_winograd_claims_only_unit_stride_padded_3x3(k, stride, pad, groups, rng):
    workload = blocked(conv_workload(rng, 32, 32, 10, k, stride, pad, groups), 16, 16)
    assert not registry.get(WINOGRAD).matches(workload)
    assert registry.get(WINOGRAD).matches(blocked(conv_workload(rng, 32, 32, 10, 3, 1, 1), 16, 16))
