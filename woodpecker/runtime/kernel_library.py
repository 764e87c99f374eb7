"""Load a kernel library that compile/toolchain.py linked, and call its kernels through ctypes.

A kernel library directory holds `kernels.so`, `kernels.npz` (packed weights, no pickle)
and `kernels.json` (target, and per entry its function, constant count and view rank).
The native runtime linked into it (native/native_runtime.c) brings a spinning pool for the
kernels' parallel loops, sized by HL_NUM_THREADS, an error handler that keeps a failing
kernel's message (Halide's own aborts the process), and `wpk_run`, which calls a plan's
kernels one after another without returning to Python (runtime/executor.py).
"""

from __future__ import annotations

import _ctypes
import ctypes
import json
import os
import struct
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from woodpecker.errors import WoodpeckerError
from woodpecker.runtime.memory import ALIGNMENT, aligned_empty

LIBRARY, CONSTANTS, INDEX = "kernels.so", "kernels.npz", "kernels.json"
_READ_PIECE = 32 << 20  # bytes read by one task of _read_constants
# A zip member's local header: signature, version, flags, method, time, date, CRC, sizes, name and extra lengths
_LOCAL_HEADER = struct.Struct("<4s5HLLLHH")
# Pool workers spin this long after a parallel loop before they sleep: the next kernel of a
# plan starts within a few microseconds, and a sleeping worker takes tens of them to wake.
SPIN_US = 200


def missing_features(target: str) -> list[str]:
    """What a library compiled for `target` needs that this CPU lacks (arch, OS or ISA features)."""
    from woodpecker.compile.toolchain import aot_target  # Halide's view of this CPU

    def parts(text: str) -> tuple[list[str], set[str]]:
        fields = text.split("-")
        return fields[:3], {f for f in fields[3:] if not f.startswith("tune_")}

    (want_base, want), (have_base, have) = parts(target), parts(str(aot_target()))
    base = [f"{'-'.join(want_base)} (this machine: {'-'.join(have_base)})"] if want_base != have_base else []
    return base + sorted(want - have)


def pool_threads() -> int:
    return int(os.environ.get("HL_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))


def start_native(handle: ctypes.CDLL) -> None:
    """Keep kernels' error messages, and run their parallel loops on the native pool (on Halide's
    own if no thread starts)."""
    handle.wpk_start(pool_threads(), SPIN_US)
    handle.wpk_last_error.restype = ctypes.c_char_p


class _Dimension(ctypes.Structure):
    _fields_ = [
        ("min", ctypes.c_int32),
        ("extent", ctypes.c_int32),
        ("stride", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class _Type(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Buffer(ctypes.Structure):
    """halide_buffer_t (HalideRuntime.h)."""

    _fields_ = [
        ("device", ctypes.c_uint64),
        ("device_interface", ctypes.c_void_p),
        ("host", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("type", _Type),
        ("dimensions", ctypes.c_int32),
        ("dim", ctypes.POINTER(_Dimension)),
        ("padding", ctypes.c_void_p),
    ]


_TYPE_CODES = {"i": 0, "u": 1, "f": 2, "b": 1}


def _buffer(array: np.ndarray) -> _Buffer:
    """A halide_buffer_t viewing `array`, axes reversed as hl.Buffer does (innermost first)."""
    itemsize = array.itemsize
    dims = (_Dimension * array.ndim)(
        *[
            _Dimension(0, extent, stride // itemsize, 0)
            for extent, stride in zip(array.shape[::-1], array.strides[::-1])
        ]
    )
    bits = 1 if array.dtype == np.bool_ else 8 * itemsize
    buffer = _Buffer(0, None, array.ctypes.data, 0, _Type(_TYPE_CODES[array.dtype.kind], bits, 1), array.ndim, dims)
    buffer._keep = dims  # the dimension array must outlive the struct
    return buffer


class KernelLibrary:
    """A library written by `compile_library`/`link_library`, loaded; refuses one built for another CPU.
    A self-contained library starts its own pool, which `close` stops."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        meta = json.loads((directory / INDEX).read_text())
        missing = missing_features(meta["target"])
        if missing:
            raise WoodpeckerError(
                f"{directory}: kernels compiled for {meta['target']}; this CPU lacks {', '.join(missing)}. "
                "Optimize the model again on this machine."
            )
        self.with_runtime = meta["with_runtime"]
        if self.with_runtime:
            shared = None
        else:
            from woodpecker.compile.toolchain import load_runtime  # tuning candidates share one runtime

            shared = load_runtime()
        self.handle: ctypes.CDLL | None = ctypes.CDLL(str(directory / LIBRARY))
        if self.with_runtime:
            start_native(self.handle)
        self._runtime = shared or self.handle  # the native runtime its kernels report errors to
        self.entries: dict[str, dict] = meta["kernels"]
        self._constants = _read_constants(directory / CONSTANTS)

    def kernel(self, entry: str) -> AotKernel:
        info = self.entries[entry]
        constants = [self._constants[f"{entry}.{i}"] for i in range(info["constants"])]
        function = info["function"]
        return AotKernel(
            self, getattr(self.handle, function), getattr(self.handle, f"{function}_argv"), constants, info["flatten"]
        )

    def native_runner(self) -> Callable:
        """`wpk_run(n, entries, arguments, failed)` of the native runtime linked into this library."""
        run = self.handle.wpk_run
        run.restype = ctypes.c_int
        run.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        return run

    def error(self, code: int) -> WoodpeckerError:
        message = self._runtime.wpk_last_error().decode(errors="replace").strip()
        return WoodpeckerError(f"Halide kernel returned error code {code}: {message}")

    def pool_sleep(self) -> None:
        """Let the pool's workers sleep now instead of spinning (another library is about to run)."""
        if self.with_runtime and self.handle is not None:
            self.handle.wpk_pool_sleep()

    def close(self) -> None:
        """Unload the library; none of its kernels may be called afterwards."""
        if self.handle is not None:
            if self.with_runtime:
                self.handle.wpk_pool_stop()  # no worker may run the library's code once it is unmapped
            _ctypes.dlclose(self.handle._handle)
            self.handle = None


def _read_constants(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a library's uncompressed .npz, read straight from the file into one block
    (see aligned_empty: huge pages for weights streamed every run), each on a cache line of its own.

    Why not zipfile's reader: it returns each member as a bytes object (a transient copy of the
    largest weight, 400 MB in VGG-16) and checks its CRC (the plan's manifest already hashed
    the file). Read directly and in pieces on every core (faulting the block's pages in is most
    of the work), VGG-16's 550 MB take 0.1-0.3 s instead of 0.6-2.5 s."""
    members = []  # name, data offset in the file, shape, dtype, bytes, offset in the block
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WoodpeckerError(f"{path}: unreadable kernel weights ({exc})") from None
    end = 0
    with archive, open(path, "rb", buffering=0) as raw:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise WoodpeckerError(f"{path}: {info.filename} is compressed; kernel weights are stored plain")
            raw.seek(info.header_offset)
            local = raw.read(_LOCAL_HEADER.size)
            signature, *_, name_length, extra_length = _LOCAL_HEADER.unpack(local)
            if signature != b"PK\x03\x04":
                raise WoodpeckerError(f"{path}: {info.filename} has no local zip header")
            raw.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
            major, _ = np.lib.format.read_magic(raw)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(raw)
            if fortran_order or dtype.hasobject:
                raise WoodpeckerError(f"{path}: {info.filename} is not a plain C-ordered array")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            members.append((info.filename.removesuffix(".npy"), raw.tell(), shape, dtype, nbytes, end))
            end += -(-nbytes // ALIGNMENT) * ALIGNMENT
        block = aligned_empty(end)
        pieces = [
            (name, start + at, offset + at, min(_READ_PIECE, nbytes - at))
            for name, start, _, _, nbytes, offset in members
            for at in range(0, nbytes, _READ_PIECE)
        ]

        def read_piece(piece: tuple[str, int, int, int]) -> None:
            name, start, offset, size = piece
            view = memoryview(block[offset : offset + size])
            done = 0
            while done < size:
                count = os.preadv(raw.fileno(), [view[done:]], start + done)
                if not count:
                    raise WoodpeckerError(f"{path}: {name} is truncated")
                done += count

        with ThreadPoolExecutor(max_workers=min(len(pieces), os.cpu_count() or 1, 8) or 1) as pool:
            list(pool.map(read_piece, pieces))
    return {
        name: block[offset : offset + nbytes].view(dtype).reshape(shape)
        for name, _, shape, dtype, nbytes, offset in members
    }


class AotKernel:
    """One entry point of a loaded KernelLibrary, with its constant buffers bound."""

    def __init__(self, library: KernelLibrary, function, argv_function, constants: list[np.ndarray], flatten: int):
        self.library = library  # keeps the library loaded
        self._function = function
        self._function.restype = ctypes.c_int
        self._argv_function = argv_function
        self._flatten = int(flatten)
        self._constants = constants
        self._constant_buffers = [_buffer(c) for c in constants]
        self._cache: dict[tuple, _Buffer] = {}

    def _view(self, array: np.ndarray) -> _Buffer:
        # Same address, shape and strides give an identical struct, so a cached one is always right.
        key = (array.ctypes.data, array.shape, array.strides, array.dtype.str)
        buffer = self._cache.get(key)
        if buffer is None:
            if len(self._cache) > 64:
                self._cache.clear()
            buffer = self._cache[key] = _buffer(array)
        return buffer

    def __call__(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        inputs, outputs = as_views(inputs, self._flatten), as_views(outputs, self._flatten)
        buffers = [*map(self._view, inputs), *self._constant_buffers, *map(self._view, outputs)]
        code = self._function(*[ctypes.byref(b) for b in buffers])
        if code != 0:
            raise self.library.error(code)

    def bind(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> BoundCall:
        """This kernel on fixed arrays, as the native runner calls it (the arrays must stay alive)."""
        buffers = [_buffer(a) for a in as_views(inputs, self._flatten) + as_views(outputs, self._flatten)]
        buffers[len(inputs) : len(inputs)] = self._constant_buffers
        arguments = (ctypes.c_void_p * len(buffers))(*[ctypes.addressof(b) for b in buffers])
        return BoundCall(ctypes.cast(self._argv_function, ctypes.c_void_p).value, arguments, buffers)


@dataclass(frozen=True)
class BoundCall:
    """An `_argv` entry point and its argument array (pointers to `buffers`, kept alive here)."""

    function: int
    arguments: ctypes.Array
    buffers: list[_Buffer]


def as_views(arrays: list[np.ndarray], dims: int) -> list[np.ndarray]:
    """The arrays as `Definition.flatten`-dimensional views (no copies)."""
    if dims == 1:
        return [a.reshape(-1) for a in arrays]
    if dims == 2:
        return [a.reshape(-1, a.shape[-1]) for a in arrays]
    if dims == 3:
        return [a.reshape(-1, *a.shape[-2:]) for a in arrays]
    return arrays
