"""Worker processes: started with `spawn` from any kind of program, quiet on Ctrl-C, never restarted.

`spawn` starts a child by importing the parent's main module again. A program read from standard
input (`python - <<EOF`) has no such module on disk ('<stdin>'), and a script without an
`if __name__ == "__main__"` guard would run again in every child. Woodpecker's workers only run
Woodpecker's own functions, so the main module is hidden from them while they start.

A worker that dies is not replaced (multiprocessing.Pool replaces workers that die as they
start, without end): `WorkerPool` reports the first death as an error. Workers ignore Ctrl-C:
the parent stops them and reports the interrupt once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import context as mp_context
from typing import Any

from woodpecker.errors import WoodpeckerError

_starting = threading.Lock()  # the main module's attributes are swapped while one process starts


class WorkerDied(WoodpeckerError):
    """A worker process of a WorkerPool ended without finishing its task."""


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """multiprocessing tells a spawned child to import `__main__` by its __spec__ or __file__: hide both."""
    main = sys.modules.get("__main__")
    with _starting:
        if main is None:
            yield
            return
        saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class _Process(mp_context.SpawnProcess):
    def start(self) -> None:
        with _main_module_hidden():
            super().start()


class SpawnContext(mp_context.SpawnContext):
    """multiprocessing's spawn context, its processes started with the main module hidden and
    remembered (`started`), so that their owner can kill them."""

    def __init__(self):
        super().__init__()
        self.started: list[_Process] = []

    def Process(self, *args: Any, **kwargs: Any) -> _Process:  # multiprocessing's name for it
        process = _Process(*args, **kwargs)
        self.started.append(process)
        return process


def ignore_interrupts() -> None:
    """In a worker: Ctrl-C reaches the whole process group, and the parent, which stops its workers,
    reports it once; a worker printing its own traceback would only add noise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _initialize(initializer: Callable[[], None] | None) -> None:
    ignore_interrupts()
    if initializer is not None:
        initializer()


class WorkerPool:
    """`processes` spawned workers running submitted functions; `terminate` kills them at once (a
    compile that hangs). A worker that dies, as it starts or later, fails its task and every
    pending one with a WoodpeckerError naming `purpose`."""

    def __init__(self, processes: int, purpose: str, initializer: Callable[[], None] | None = None):
        self.purpose = purpose
        self._context = SpawnContext()
        self._executor = ProcessPoolExecutor(
            processes, mp_context=self._context, initializer=_initialize, initargs=(initializer,)
        )

    def submit(self, function: Callable, *args: Any) -> Future:
        try:
            return self._executor.submit(function, *args)
        except BrokenProcessPool:
            raise self._broken() from None

    def result(self, future: Future, timeout: float) -> Any:
        """The task's result; TimeoutError after `timeout` seconds, WorkerDied if a worker died."""
        try:
            return future.result(timeout=timeout)
        except BrokenProcessPool:
            raise self._broken() from None

    def _broken(self) -> WorkerDied:
        codes = sorted({p.exitcode for p in self._context.started if p.exitcode not in (None, 0)})
        exit = f" (exit code {', '.join(map(str, codes))})" if codes else ""
        return WorkerDied(f"a {self.purpose} worker process died{exit}; the messages above it say why")

    def terminate(self) -> None:
        """Kill the workers now (their tasks are abandoned) and release the pool."""
        processes = [p for p in self._context.started if p.pid is not None]
        for process in processes:
            with contextlib.suppress(OSError):
                process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)

    def close(self) -> None:
        """Let the workers finish what they were given, then stop them."""
        self._executor.shutdown(wait=True)
