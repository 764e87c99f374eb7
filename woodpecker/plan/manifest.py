"""A plan directory's manifest: the BLAKE3 of every file in it, and the rules for trusting a directory.

A plan holds machine code (its kernel library) and model files that libraries parse, so loading
reads nothing the manifest does not list: every regular file in the directory must be listed
with a matching checksum, and a symbolic link, a special file or a listed name that leaves the
directory refuses the whole plan. The checksums guard against damage and mix-ups, not against a
malicious author (docs/plan-format.md). The same rules decide whether `-o` may replace a
directory: only one that is a Woodpecker plan by them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath

import blake3

from woodpecker.errors import PlanError
from woodpecker.output_files import cannot_write_in

MANIFEST = "manifest.json"
PLAN_FILE = "plan.json"
CHECKSUM = "blake3"  # SHA-256 took 0.55 s of VGG-16's load (1 GB/s a core); BLAKE3 hashes 4-7 GB/s


def digest(path: Path) -> str:
    """The file's BLAKE3, hashed on every core (VGG-16's two 550 MB weight files: 0.2 s)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:  # an empty file cannot be mapped
        hasher.update_mmap(path)
    return hasher.hexdigest()


def write_manifest(directory: Path) -> None:
    """List every file under `directory` (the plan being written) with its checksum."""
    files = {name: digest(directory / name) for name in sorted(_tree(directory))}
    (directory / MANIFEST).write_text(json.dumps({"checksum": CHECKSUM, "files": files}, indent=1))


def check_manifest(directory: Path) -> None:
    """Raise PlanError unless `directory` holds exactly the files its manifest lists, unchanged."""
    if not (directory / MANIFEST).is_file():
        raise PlanError(f"{directory}: not a Woodpecker plan (no {MANIFEST})")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise PlanError(f"{directory}/{MANIFEST}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("checksum") != CHECKSUM:
        raise PlanError(
            f"{directory}: written by another version of Woodpecker (manifest without {CHECKSUM} checksums); "
            "optimize the model again"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise PlanError(f"{directory}/{MANIFEST}: malformed (no table of files and their checksums)")
    for name in listed:
        if not _inside(name):
            raise PlanError(f"{directory}/{MANIFEST}: lists '{name}', which is not a path inside the plan")
    present = _tree(directory)
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise PlanError(f"{directory}: {unlisted[0]} is not listed in the manifest (added after the plan was saved)")
    for name in sorted(set(listed) | {PLAN_FILE}):
        if name not in present:
            raise PlanError(f"{directory}: missing {name}")
        if listed.get(name) != digest(directory / name):
            raise PlanError(f"{directory}/{name}: checksum does not match the manifest (modified or damaged)")


def is_plan(directory: Path) -> bool:
    """Whether `directory` is a complete, unmodified Woodpecker plan (so replacing it loses nothing)."""
    try:
        check_manifest(directory)
        data = json.loads((directory / PLAN_FILE).read_text())
    except (PlanError, OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("format"), int)


def check_output_dir(directory: str | Path) -> Path:
    """Where a plan may be written: a new path, an empty directory, or an existing Woodpecker plan
    (replaced once the new one is complete). Anything else is refused before any work starts."""
    target = Path(directory).absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise PlanError(f"{directory}: exists and is not a directory; choose another output path")
    if target.is_dir() and any(target.iterdir()) and not is_plan(target):
        raise PlanError(
            f"{directory}: exists and is not a Woodpecker plan; refusing to replace it "
            "(choose a new or empty directory)"
        )
    parent = nearest_existing(target.parent)
    if not parent.is_dir():
        raise PlanError(f"{directory}: {parent} is not a directory")
    reason = cannot_write_in(parent)
    if reason:
        raise PlanError(f"{directory}: cannot write in {parent} ({reason})")
    return target


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (what a `mkdir -p` would create into)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(name: object) -> bool:
    """A relative, normalized path with no '..' (nor the manifest itself)."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and path.as_posix() == name and name != MANIFEST


def _tree(directory: Path) -> set[str]:
    """Every regular file under `directory` but the manifest, as relative POSIX paths; a symbolic
    link or a special file anywhere in it refuses the plan."""
    names = set()
    for root, dirs, files in os.walk(directory, onerror=_raise):
        for entry in dirs + files:
            path = Path(root) / entry
            mode = os.lstat(path).st_mode
            relative = path.relative_to(directory).as_posix()
            if stat.S_ISLNK(mode):
                raise PlanError(f"{directory}: {relative} is a symbolic link; a plan holds only its own files")
            if entry in files and not stat.S_ISREG(mode):
                raise PlanError(f"{directory}: {relative} is not a regular file")
            if entry in files and relative != MANIFEST:
                names.add(relative)
    return names


def _raise(error: OSError) -> None:
    raise PlanError(f"{error.filename}: cannot read ({error.strerror})")
