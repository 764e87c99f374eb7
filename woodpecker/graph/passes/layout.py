"""One blocked channel layout for the whole graph: NCHW[b]c, with b the target's float vector width.

In NCHW a convolution's reduction touches one cache line per input channel and its output
channels are a plane apart; blocked, a vector of b output channels is one contiguous store
and b input channels one cache line. Libraries do the same internally (oneDNN, MLAS, TVM) but
convert at every call; here the layout is decided once for the graph, so values stay blocked
from one kernel to the next and are converted (by a Relayout node) only where an op has no
blocked kernel, or where the graph enters and leaves.

Which ops keep a value blocked, and what they need:
- Conv with groups 1: reads its input plain or blocked, writes blocked when b divides its
  output channels; a fused residual input must be blocked like the output, a fused input
  scale like the input;
- depthwise Conv, MaxPool, AveragePool, BatchNormalization: blocked in, blocked out (they
  follow their input); a grouped Conv too when whole input blocks hold each output block's groups;
  a FusedGroupNorm when whole blocks make each group;
- GlobalAveragePool / GlobalMaxPool: read blocked, write plain (1x1: the bytes agree anyway);
- element-wise ops on same-shape inputs and Concat over channels: blocked when an input is;
- Transpose NCHW -> NHWC reads blocked, NHWC -> NCHW writes blocked (whole channel vectors move);
- Add/Sub/Mul/Div of a feature map and one value per channel (a squeeze-and-excitation
  scale (N, C, 1, 1), or a constant): blocked when the feature map is.
Everything else reads plain values. Values that are not 4-D float32, or whose channel count
neither b nor b/2 divides, stay plain.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node, Value, broadcasts_to
from woodpecker.ops.fused import GROUP_NORM

ELEMENTWISE_OPS = (
    *("Add", "Sub", "Mul", "Div", "Max", "Min"),
    *("Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Neg", "Abs"),
    *("LeakyRelu", "Elu", "Softplus", "Softsign", "Erf", "Sqrt", "Reciprocal"),
)
CHANNELWISE_OPS = ("Add", "Sub", "Mul", "Div")
TO_CHANNEL_LAST, TO_CHANNEL_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]  # Transposes that move whole channel vectors
FOLLOW_INPUT_OPS = ("MaxPool", "AveragePool", "BatchNormalization")
GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool")


def block_layout(graph: Graph, block: int) -> Graph:
    """The graph with blocked values and the fewest Relayout nodes the rules above allow."""
    out = graph.copy()
    out.nodes = []
    converted: dict[tuple[str, int], str] = {}  # (value, block) -> a converted copy, made once

    def as_block(name: str, wanted: int) -> str:
        value = out.values[name]
        if value.block == wanted or name in out.constants:
            return name
        if (name, wanted) not in converted:
            copy = f"{name}__nchw{wanted}c" if wanted else f"{name}__nchw"
            out.values[copy] = Value(copy, value.shape, value.dtype, wanted)
            out.nodes.append(Node(f"{copy}/relayout", "Relayout", (name,), (copy,)))
            converted[(name, wanted)] = copy
        return converted[(name, wanted)]

    for node in graph.nodes:
        wanted_inputs, output_block = _decide(out, node, block)
        inputs = tuple(as_block(n, b) if n else n for n, b in zip(node.inputs, wanted_inputs))
        for name in node.outputs:
            if name and output_block:
                out.values[name] = Value(name, out.values[name].shape, out.values[name].dtype, output_block)
        out.nodes.append(node.replace(inputs=inputs) if inputs != node.inputs else node)
    return _plain_outputs(out)


def block_of(value: Value, block: int) -> int:
    """The block a value gets: the vector width, or half of it when only that divides the channels
    (MobileNetV2's 24-channel values then stay blocked in half vectors); 0 when neither does."""
    if len(value.shape) != 4 or value.dtype != "float32":
        return 0
    return next((b for b in (block, block // 2) if b >= 4 and value.shape[1] % b == 0), 0)


def _decide(graph: Graph, node: Node, block: int) -> tuple[list[int], int]:
    """The block each input must have and the block the outputs get (0: plain)."""
    values = [graph.values[n] if n else None for n in node.inputs]
    current = [v.block if v is not None else 0 for v in values]
    plain = [0] * len(values)
    outputs = [graph.values[n] for n in node.outputs if n]
    if node.op in GLOBAL_POOL_OPS:
        return current, 0
    if node.op == "Transpose" and len(values[0].shape) == 4:
        perm = list(node.attrs.get("perm", ()))
        if perm == TO_CHANNEL_LAST:  # reads blocked as it comes, writes plain
            return current, 0
        if perm == TO_CHANNEL_FIRST:  # reads plain, writes blocked
            return plain, block_of(outputs[0], block)
    out_block = block_of(outputs[0], block) if len(outputs) == 1 else 0
    if not out_block:
        return plain, 0
    if node.op == "Conv":
        group = node.attrs.get("group", 1)
        if group == 1:  # input as it comes; a residual input like the output
            return _conv_blocks(current[0], out_block, len(values)), out_block
        if group == values[0].shape[1] == outputs[0].shape[1] and current[0]:  # depthwise, blocked input
            return _conv_blocks(out_block, out_block, len(values)), out_block
        if current[0] and grouped_span(values[0].shape[1], outputs[0].shape[1], group, out_block, out_block):
            return _conv_blocks(out_block, out_block, len(values)), out_block
        return plain, 0
    if node.op in FOLLOW_INPUT_OPS:
        return [current[0], *plain[1:]], current[0]
    if node.op == GROUP_NORM:  # blocked when whole blocks make each group
        group = values[0].shape[1] // node.attrs["groups"]
        follow = current[0] if current[0] and group % current[0] == 0 else 0
        return [follow, *plain[1:]], follow
    full = channelwise_input(graph, node)
    if full is not None and current[full]:
        return [0 if n in graph.constants else out_block for n in node.inputs], out_block
    shapes = {v.shape for v in values if v is not None}
    same_shape = shapes == {outputs[0].shape} and all(n not in graph.constants for n in node.inputs if n)
    channel_concat = node.op == "Concat" and node.attrs.get("axis") in (1, -3)
    if (
        ((node.op in ELEMENTWISE_OPS and same_shape) or channel_concat)
        and any(current)
        and all(len(v.shape) == 4 and v.shape[1] % out_block == 0 for v in values if v is not None)
    ):
        return [out_block] * len(values), out_block  # concatenated stored arrays need one block
    return plain, 0


def _conv_blocks(in_block: int, out_block: int, count: int) -> list[int]:
    """A Conv's inputs X, W, B, residual (like the output), input scale (like X)."""
    return [in_block, 0, 0, out_block, in_block][:count]


def grouped_span(c_in: int, c_out: int, groups: int, in_block: int, out_block: int) -> int:
    """Input channels one block of output channels reads in a grouped convolution, when whole
    input blocks hold them (RegNet's groups of 8 channels in blocks of 8 or 16); else 0."""
    group_in, group_out = c_in // groups, c_out // groups
    if out_block % group_out == 0:
        span = out_block // group_out * group_in  # several whole groups per output block
    elif group_out % out_block == 0:
        span = group_in  # the block lies inside one group
    else:
        return 0
    return span if span % in_block == 0 else 0


def channelwise_input(graph: Graph, node: Node) -> int | None:
    """Where the feature map is when `node` combines one with one value per channel (a run-time
    (N, C, 1, 1) or a constant that broadcasts per channel); None for any other node."""
    shape = graph.shape(node.outputs[0])
    if node.op not in CHANNELWISE_OPS or len(node.inputs) != 2 or len(shape) != 4:
        return None
    for full, other in ((0, 1), (1, 0)):
        name = node.inputs[other]
        if node.inputs[full] in graph.constants or graph.shape(node.inputs[full]) != shape:
            continue
        if name in graph.constants and is_per_channel(graph.constants[name].shape, shape[1]):
            return full
        if name not in graph.constants and graph.shape(name) == (shape[0], shape[1], 1, 1):
            return full
    return None


def is_per_channel(shape: tuple[int, ...], channels: int) -> bool:
    """Whether an array of this shape broadcasts to one value per channel of an NCHW tensor."""
    return broadcasts_to(shape, (1, channels, 1, 1))


def _plain_outputs(graph: Graph) -> Graph:
    """The graph's outputs stay plain: a blocked one is renamed and converted back under its name."""
    for name in graph.outputs:
        value = graph.values[name]
        if not value.block:
            continue
        inner = f"{name}__nchw{value.block}c"
        graph.values[inner] = Value(inner, value.shape, value.dtype, value.block)
        graph.values[name] = Value(name, value.shape, value.dtype)
        graph.nodes = [
            n.replace(
                inputs=tuple(inner if i == name else i for i in n.inputs),
                outputs=tuple(inner if o == name else o for o in n.outputs),
            )
            for n in graph.nodes
        ]
        graph.nodes.append(Node(f"{name}/relayout", "Relayout", (inner,), (name,)))
    return graph
