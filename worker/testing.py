"""Test helpers shipped with the package: the worker as a real process, for tests, benchmarks and demos.

``WorkerProcess`` starts ``python -m worker run --config FILE`` (or any stand-in command) with its stdout and
stderr in one log file, finds the metrics/health port the worker bound (``metrics_port = 0``) from its JSON
log line ``{"msg": "http server listening", "port": N, ...}``, answers ``GET`` requests on that port, and
stops the process: SIGTERM (drain and commit), then SIGKILL after a grace period. Used as a context manager
it is stopped when the block ends, also on failure.

Every call blocks at most for the timeout it is given. When the process does not do what the caller waits
for (exits first, never logs its port, is not ready, does not exit), `WorkerProcessError` is raised with the
tail of the log, so a failing test or benchmark shows why.
"""

from __future__ import annotations

import json
import os
import signal as signals
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LISTENING = "http server listening"  # the worker's log message that carries its HTTP port
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
TAIL_LINES = 40
POLL_S = 0.05


class WorkerProcessError(RuntimeError):
    """The process did not do what the caller waited for; the message ends with the log's tail."""


class WorkerProcess:
    """One started process and its log file; see the module docstring.

    Starting happens in the constructor, as with ``subprocess.Popen``. The process gets its own session, so
    a terminal's Ctrl-C reaches only the caller, which then stops the worker in order. ``env`` is added to
    this process's environment (with ``PYTHONUNBUFFERED=1`` so the log file is current); ``cwd`` defaults to
    the current directory. The caller owns the process: call ``stop`` or use ``with``.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._port: int | None = None
        with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self._process = subprocess.Popen(
                self.args,
                cwd=cwd,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @classmethod
    def start(
        cls, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Self:
        """Start ``python -m worker run --config config`` with this interpreter."""
        return cls(
            [sys.executable, "-m", "worker", "run", "--config", str(config)], log_path, env=env, cwd=cwd
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code, None while running (negative: the signal that ended it)."""
        return self._process.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process; nothing when it has already exited. Does not wait."""
        if self.alive:
            self._process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """The exit code once the process ended; `WorkerProcessError` if it still runs after ``timeout_s``."""
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise WorkerProcessError(f"still running after {timeout_s} s\n{self.tail()}") from None

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL; the exit code. Idempotent."""
        if self.alive:
            self.signal(signals.SIGTERM)
            try:
                return self._process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signals.SIGKILL)
        return self.wait(grace_s)

    def log_lines(self) -> list[str]:
        """Every line logged so far (stdout and stderr interleaved); empty before the first."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def tail(self, lines: int = TAIL_LINES) -> str:
        """A header naming the log file and the exit code, then the last ``lines`` lines of the log."""
        return f"--- {self.log_path} (exit {self.returncode}) ---\n" + "\n".join(self.log_lines()[-lines:])

    def logged_port(self) -> int | None:
        """The HTTP port from the worker's "http server listening" log line, None until it is logged."""
        if self._port is None:
            for line in self.log_lines():
                if LISTENING in line and (port := _port_of(line)) is not None:
                    self._port = port
                    break
        return self._port

    def port(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """The HTTP port, waiting for the log line; `WorkerProcessError` if the process exits first or the
        line does not come within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            exited = not self.alive  # read before the log, so a line written just before exiting counts
            if (port := self.logged_port()) is not None:
                return port
            if exited:
                raise WorkerProcessError(f"exited before logging its http port\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise WorkerProcessError(f"no http port logged within {timeout_s} s\n{self.tail()}")
            time.sleep(POLL_S)

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """``GET path`` on the process's HTTP server: (status, body). An HTTP error status (a 503 from
        ``/readyz``) is returned, not raised; a connection error raises ``OSError``. Waits for the port
        as ``port()`` does."""
        url = f"http://127.0.0.1:{self.port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return int(exc.code), bytes(exc.read())
            finally:
                exc.close()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until ``/readyz`` answers 200; `WorkerProcessError` if the process exits first or it is
        not ready within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self.port(timeout_s)
        while True:
            if not self.alive:
                raise WorkerProcessError(f"exited before it was ready\n{self.tail()}")
            try:
                status: int | str = self.get("/readyz", max(0.1, min(1.0, deadline - time.monotonic())))[0]
            except OSError as exc:  # refused or reset: the server is stopping, or a slow answer
                status = f"{type(exc).__name__}: {exc}"
            if status == 200:
                return
            if time.monotonic() >= deadline:
                raise WorkerProcessError(f"not ready within {timeout_s} s (/readyz: {status})\n{self.tail()}")
            time.sleep(POLL_S)


def _port_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("msg") == LISTENING and isinstance(record.get("port"), int):
        return int(record["port"])
    return None
