"""Files the commands write (`run -o`, `records export`, `bench --json`): checked before any work,
written beside the target and renamed into place, never replacing a file of another kind.

A path that names an existing file is replaced only when that file is of the kind the command
writes (an .npz archive, a records export, a bench report), since a user re-running a command
expects its old output to be replaced, but not a file the tool did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from woodpecker.errors import WoodpeckerError


class OutputError(WoodpeckerError):
    """An output path that cannot or must not be written."""


def check_output_file(path: str | Path, is_ours: Callable[[Path], bool], kind: str) -> Path:
    """Raise OutputError unless `path` can be written: its directory exists and is writable, and it
    names nothing or a file `is_ours` recognizes as a `kind` written before."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{path}: is a directory; name a file to write to")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: no such directory {parent}")
    reason = cannot_write_in(parent)
    if reason:
        raise OutputError(f"{path}: cannot write in {parent} ({reason})")
    if target.exists() and not is_ours(target):
        raise OutputError(f"{path}: exists and is not {kind}; refusing to overwrite it")
    return target


def cannot_write_in(directory: Path) -> str | None:
    """Why no file can be created in `directory`, or None. A real write, not os.access: root passes
    that test on read-only file systems too."""
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def write_replacing(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through `write` into a temporary file beside `path`, then rename it into place: an
    interrupted or failed write leaves neither a half-written file nor a temporary one."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 600 would keep other readers out
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_npz(path: Path) -> bool:
    """A zip archive (what numpy.savez writes), or an empty file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"PK\x03\x04", b"")


def is_json_lines(keys: set[str]) -> Callable[[Path], bool]:
    """A file whose first line is a JSON object with `keys` (or an empty file)."""

    def check(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                first = f.readline(1 << 20)
            return not first.strip() or keys <= set(json.loads(first))
        except (OSError, ValueError, TypeError):
            return False

    return check


def is_json_with(keys: set[str]) -> Callable[[Path], bool]:
    """A JSON object with `keys` (or an empty file)."""

    def check(path: Path) -> bool:
        try:
            text = path.read_text()
            return not text.strip() or keys <= set(json.loads(text))
        except (OSError, ValueError, TypeError):
            return False

    return check


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
