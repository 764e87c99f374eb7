"""How Woodpecker talks to a process that builds or times something apart: `python -m <module>`,
requests and answers one JSON object per line, a timeout on every answer, standard error to a file.

Answers carry a prefix because libraries print to standard output too. Standard error goes to a
file, not a pipe, so a chatty library cannot block the worker; its tail explains a crash. The
worker ignores Ctrl-C: the parent stops it and says so.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PREFIX = "wpk-worker: "


def answer(message: dict) -> None:
    """Worker side: send one answer."""
    print(PREFIX + json.dumps(message), flush=True)


def requests() -> Iterator[dict]:
    """Worker side: the requests, one per line, until standard input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


class WorkerProcess:
    """The parent's end: a worker started now, asked and answered in JSON lines."""

    def __init__(self, module: str, log: Path):
        self.log = log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._answers: queue.Queue[str] = queue.Queue()  # a thread reads stdout; EOF arrives as ""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self._answers.put(line[len(PREFIX) :])
        self._answers.put("")

    def send(self, message: dict) -> bool:
        """False if the worker is gone."""
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def read(self, timeout_s: float) -> dict:
        """The next answer, or {"error": ...} when none came within `timeout_s` or the worker died."""
        try:
            line = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            self.process.kill()
            self.process.wait()
            return {"error": f"no answer within {timeout_s:.0f} s", "timed_out": True}
        return json.loads(line) if line else self._failure()

    def ask(self, message: dict, timeout_s: float) -> dict:
        return self.read(timeout_s) if self.send(message) else self._failure()

    def _failure(self) -> dict:
        self.process.kill()
        code = self.process.wait()
        tail = self.log.read_text(errors="replace").strip().splitlines() or ["no output"]
        return {"error": f"exit {code}: {tail[-1][-300:]}", "exit_code": code}

    def finish(self) -> None:
        """Tell the worker to end (its input closes), without waiting for it."""
        if self.process.poll() is None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()

    def close(self, timeout_s: float = 10.0) -> None:
        self.finish()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
