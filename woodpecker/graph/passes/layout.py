"""One blocked channel layout for the whole graph: NCHW[b]c, with b the target's float vector width.

In NCHW a convolution's reduction touches one cache line per input channel and its output
channels are a plane apart; blocked, a vector of b output channels is one contiguous store
and b input channels one cache line. Libraries do the same internally (oneDNN, MLAS, TVM) but
convert at every call; here the layout is decided once for the graph, so values stay blocked
from one kernel to the next and are converted (by a Relayout node) only where an op has no
blocked kernel, or where the graph enters and leaves.

Which ops keep a value blocked, and what they need:
- Conv with groups 1: reads its input plain or blocked, writes blocked when a block divides its
  output channels, else plain (with no fused residual); a fused residual input must be blocked
  like the output, a fused input scale like the input;
- depthwise Conv, MaxPool, AveragePool, BatchNormalization, and a Resize of H and W (HRNet's
  and FPN's upsampling): blocked in, blocked out (they follow their input); a grouped Conv too
  when whole input blocks hold each output block's groups (in half or quarter blocks where only
  those do: RegNetY-016's groups of 24 channels in 8s under AVX-512's 16); a FusedGroupNorm
  when whole blocks make each group;
- GlobalAveragePool / GlobalMaxPool: read blocked, write plain (1x1: the bytes agree anyway);
- Reshape, Flatten, Squeeze, Unsqueeze of a blocked (N, C, 1, 1) value: read it as it is (its
  bytes are those of the plain value) and write plain, as views (a classifier head's Flatten);
- element-wise ops on same-shape inputs (and scalar constants: Clip's bounds): blocked when an input is;
- Concat over channels: in place when its parts share the widest block that divides them all
  (GhostNet's 12 + 12 channels in blocks of 4); else it reads each part as it comes and writes
  a block when a part is blocked or a reader takes blocked values (GhostNet-050's 18 + 18);
- Slice with forward steps: follows its input when it takes whole channel blocks (CSPNet's
  halves); else it reads its input as it comes and writes as Concat does (ReXNet's shortcut
  added to the first channels), as does a Gather of channels (ShuffleNet's channel shuffle);
- Transpose NCHW -> NHWC reads blocked, NHWC -> NCHW writes blocked (whole channel vectors move);
- Add/Sub/Mul/Div of a feature map and one value per channel (a squeeze-and-excitation
  scale (N, C, 1, 1), or a constant): blocked when the feature map is.
Everything else reads plain values. Values that are not 4-D float32, or whose channel count
none of b, b/2, b/4 (at least 4) divides, stay plain.
"""

from __future__ import annotations

from woodpecker.graph.ir import Graph, Node, Value, broadcasts_to
from woodpecker.graph.passes.canonicalize import slice_starts_steps
from woodpecker.ops.conv import RESIDUAL
from woodpecker.ops.fused import GROUP_NORM

ELEMENTWISE_OPS = (
    *("Add", "Sub", "Mul", "Div", "Max", "Min"),
    *("Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Neg", "Abs"),
    *("LeakyRelu", "Elu", "Softplus", "Softsign", "Erf", "Sqrt", "Reciprocal", "Clip"),
)
CHANNELWISE_OPS = ("Add", "Sub", "Mul", "Div")
TO_CHANNEL_LAST, TO_CHANNEL_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]  # Transposes that move whole channel vectors
FOLLOW_INPUT_OPS = ("MaxPool", "AveragePool", "BatchNormalization")
GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool")
RESHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")  # same bytes, new shape


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

    readers = graph.consumers()
    for node in graph.nodes:
        wanted_inputs, output_block = _decide(out, node, block, readers)
        inputs = tuple(as_block(n, b) if n else n for n, b in zip(node.inputs, wanted_inputs))
        for name in node.outputs:
            if name and output_block:
                out.values[name] = Value(name, out.values[name].shape, out.values[name].dtype, output_block)
        out.nodes.append(node.replace(inputs=inputs) if inputs != node.inputs else node)
    return _plain_outputs(_convs_write_as_read(out))


def _convs_write_as_read(graph: Graph) -> Graph:
    """A Conv (groups 1, no residual) writes any block: where its output's one conversion is to
    another block (a shortcut added to GhostNet's 4-blocks, a squeeze-and-excitation scale) and its
    other readers are Convs that read any block, the Conv writes that block and the conversion goes."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for name in set(node.inputs):
            readers.setdefault(name, []).append(node)
    alias: dict[str, str] = {}
    for name, nodes in readers.items():
        producer = producers.get(name)
        if (
            producer is None
            or producer.op != "Conv"
            or producer.attrs.get("group", 1) != 1
            or len(producer.inputs) > RESIDUAL
            and producer.inputs[RESIDUAL]  # stored like the output
            or name in graph.outputs
        ):
            continue
        conversions = [n for n in nodes if n.op == "Relayout"]
        others = [n for n in nodes if n.op != "Relayout"]
        if len(conversions) != 1 or not graph.values[conversions[0].outputs[0]].block:
            continue
        if not all(_reads_any_block(n, name) for n in others):
            continue
        copy = conversions[0].outputs[0]
        graph.values[name] = Value(name, graph.values[name].shape, graph.values[name].dtype, graph.values[copy].block)
        alias[copy] = name
    if alias:
        graph.nodes = [
            n.replace(inputs=tuple(alias.get(i, i) for i in n.inputs)) for n in graph.nodes if n.outputs[0] not in alias
        ]
    return graph


def _reads_any_block(node: Node, name: str) -> bool:
    """Whether `node` is a Conv (groups 1, no input scale) that reads `name` only as its input,
    which it takes in any block (its weights are packed for the block it finds), or a Concat,
    Slice or Gather of channels (kernels/halide/channel_copy.py copies from any block)."""
    if node.op in ("Concat", "Slice", "Gather"):
        return node.op == "Concat" or node.inputs[0] == name and name not in node.inputs[1:]
    is_conv = node.op == "Conv" and node.attrs.get("group", 1) == 1 and len(node.inputs) <= 4
    return is_conv and node.inputs[0] == name and name not in node.inputs[1:]


def block_of(value: Value, block: int) -> int:
    """The block a value gets: the vector width, or a half or quarter of it when only that divides
    the channels (MobileNetV2's 24 channels, GhostNet's 12 and 20), never below 4; 0 when none does."""
    if len(value.shape) != 4 or value.dtype != "float32":
        return 0
    return common_block([value.shape[1]], block)


def common_block(channels: list[int], block: int) -> int:
    """The widest of b, b/2, b/4 (at least 4) that divides every count; 0 when none does."""
    return next((b for b in (block, block // 2, block // 4) if b >= 4 and all(c % b == 0 for c in channels)), 0)


def slice_keeps_blocks(graph: Graph, node: Node, block: int) -> bool:
    """Whether a Slice of a value blocked by `block` reads whole blocks of channels (step 1, a start
    and a size that the block divides) and forward steps on the other axes."""
    bounds = slice_starts_steps(graph, node)
    if bounds is None or not block or len(graph.shape(node.inputs[0])) != 4:
        return False
    starts, steps = bounds
    size = graph.shape(node.outputs[0])[1]
    return steps[1] == 1 and starts[1] % block == 0 and size % block == 0 and min(steps) > 0


def _decide(graph: Graph, node: Node, block: int, readers: dict[str, list[Node]]) -> tuple[list[int], int]:
    """The block each input must have and the block the outputs get (0: plain)."""
    values = [graph.values[n] if n else None for n in node.inputs]
    current = [v.block if v is not None else 0 for v in values]
    plain = [0] * len(values)
    outputs = [graph.values[n] for n in node.outputs if n]
    if node.op in GLOBAL_POOL_OPS or node.op in RESHAPE_OPS and current[0] and is_one_by_one(values[0]):
        return current, 0
    if node.op == "Transpose" and len(values[0].shape) == 4:
        perm = list(node.attrs.get("perm", ()))
        if perm == TO_CHANNEL_LAST:  # reads blocked as it comes, writes plain
            return current, 0
        if perm == TO_CHANNEL_FIRST:  # reads plain, writes blocked
            return plain, block_of(outputs[0], block)
    if copies_channels(graph, node):
        return _copy_blocks(graph, node, block, readers)
    out_block = block_of(outputs[0], block) if len(outputs) == 1 else 0
    if not out_block:
        if node.op == "Conv" and node.attrs.get("group", 1) == 1 and not node.attrs.get("residual"):
            return _conv_blocks(current[0], 0, len(values)), 0  # blocked in, plain out (ReXNet's 38 channels)
        return plain, 0
    if node.op == "Conv":
        group = node.attrs.get("group", 1)
        if group == 1:  # input as it comes; a residual input like the output, in its block when it has one
            out_block = current[3] if len(values) > 3 and values[3] is not None and current[3] else out_block
            return _conv_blocks(current[0], out_block, len(values)), out_block
        if group == values[0].shape[1] == outputs[0].shape[1] and current[0]:  # depthwise: follows its input
            return _conv_blocks(current[0], current[0], len(values)), current[0]
        c_in, c_out = values[0].shape[1], outputs[0].shape[1]
        spans = [b for b in (out_block, out_block // 2, out_block // 4) if b >= 4 and c_in % b == 0 and c_out % b == 0]
        fits = next((b for b in spans if grouped_span(c_in, c_out, group, b, b)), 0)  # RegNetY's 24 in 8s
        if current[0] and fits:
            return _conv_blocks(fits, fits, len(values)), fits
        return plain, 0
    if node.op in FOLLOW_INPUT_OPS or node.op == "Resize" and is_spatial_resize(graph, node):
        return [current[0], *plain[1:]], current[0]
    if node.op == GROUP_NORM:  # blocked when whole blocks make each group
        group = values[0].shape[1] // node.attrs["groups"]
        follow = current[0] if current[0] and group % current[0] == 0 else 0
        return [follow, *plain[1:]], follow
    full = channelwise_input(graph, node)
    if full is not None and current[full]:  # the per-channel values follow the feature map
        return [0 if n in graph.constants else current[full] for n in node.inputs], current[full]
    arrays = [n for n in node.inputs if n and not (n in graph.constants and graph.constants[n].size == 1)]
    same_shape = all(n not in graph.constants and graph.shape(n) == outputs[0].shape for n in arrays)
    if node.op in ELEMENTWISE_OPS and same_shape and any(current):  # scalar constants: Clip's bounds
        follow = next(c for c in current if c)  # the first blocked input's block
        return [follow] * len(values), follow
    return plain, 0


def is_spatial_resize(graph: Graph, node: Node) -> bool:
    """A Resize of H and W only, nearest or linear, with constant scales or sizes."""
    attrs, shape = node.attrs, graph.shape(node.inputs[0])
    return (
        len(shape) == 4
        and graph.shape(node.outputs[0])[:2] == shape[:2]
        and all(n in graph.constants for n in node.inputs[1:] if n)
        and attrs.get("mode", "nearest") in ("nearest", "linear")
        and not attrs.get("antialias", 0)
        and attrs.get("keep_aspect_ratio_policy", "stretch") == "stretch"
        and "axes" not in attrs
    )


def is_one_by_one(value: Value) -> bool:
    """Whether a value is (N, C, 1, 1): blocked, its bytes are those of the plain value."""
    return len(value.shape) == 4 and value.shape[2:] == (1, 1)


def copies_channels(graph: Graph, node: Node) -> bool:
    """A Concat over channels of 4-D float32 values, a Slice of one with forward steps, or a Gather of its channels."""
    if node.op not in ("Concat", "Slice", "Gather"):
        return False
    if node.op == "Concat":
        parts = [graph.values[n] for n in node.inputs]
        four_d = all(len(v.shape) == 4 and v.dtype == "float32" and v.name not in graph.constants for v in parts)
        return node.attrs.get("axis") in (1, -3) and four_d
    value = graph.values[node.inputs[0]]
    if len(value.shape) != 4 or value.dtype != "float32" or value.name in graph.constants:
        return False
    if node.op == "Slice":
        bounds = slice_starts_steps(graph, node)
        return bounds is not None and min(bounds[1]) > 0
    return node.op == "Gather" and is_channel_gather(graph, node)


def is_channel_gather(graph: Graph, node: Node) -> bool:
    """A Gather over the channels of a 4-D value with constant 1-D indices (a channel permutation)."""
    indices = graph.constants.get(node.inputs[1])
    return node.attrs.get("axis", 0) in (1, -3) and indices is not None and indices.ndim == 1


def _copy_blocks(graph: Graph, node: Node, block: int, readers: dict[str, list[Node]]) -> tuple[list[int], int]:
    """Concat and Slice read their inputs as they come: whole blocks in one block stay so (a Concat
    in place, a Slice of whole blocks); otherwise the copy writes the block its readers want
    (kernels/halide/channel_copy.py), with no conversion before it."""
    current = [graph.values[n].block if n else 0 for n in node.inputs]
    output = graph.values[node.outputs[0]]
    if node.op in ("Slice", "Gather"):
        as_it_comes = [current[0], *[0] * (len(current) - 1)]  # bounds and indices are constants
        if node.op == "Slice" and slice_keeps_blocks(graph, node, current[0]):
            return as_it_comes, current[0]
        wanted = current[0] or _read_blocked(graph, output.name, readers)
        return as_it_comes, block_of(output, block) if wanted else 0
    same = all(c == current[0] for c in current)  # in place: the parts are slices of the output
    if same and (current[0] or not _read_blocked(graph, output.name, readers)):
        return current, current[0]
    return current, common_block([graph.values[n].shape[1] for n in node.inputs], block) or block_of(output, block)


def _read_blocked(graph: Graph, name: str, readers: dict[str, list[Node]]) -> bool:
    """Whether a reader of `name` would take it blocked: a Conv, a pool, BatchNormalization (MixNet's
    concatenated depthwise outputs), or an element-wise op with another input already blocked
    (GhostNet's shortcut added to a concatenation). Not a copy: Swin's shifted windows, Slices
    and Concats of channel-last values, stay plain."""
    blocked_readers = ("Conv", "Resize", GROUP_NORM, *FOLLOW_INPUT_OPS, *GLOBAL_POOL_OPS)
    return any(
        r.op in blocked_readers
        or r.op in ELEMENTWISE_OPS
        and any(graph.values[i].block for i in r.inputs if i and i != name and i in graph.values)
        for r in readers.get(name, [])
    )


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
