"""WorkerProcess (worker/testing.py) against small stand-in processes: no Kafka needed.

``FAKE`` behaves as the worker does towards its owner: it logs a non-JSON line, then the JSON
"http server listening" line with the port it bound, serves ``/readyz`` (status from ``FAKE_READYZ``) and
echoes other paths, and exits with ``FAKE_TERM_EXIT`` on SIGTERM (or ignores SIGTERM with
``FAKE_IGNORE_TERM``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from worker.testing import WorkerProcess, WorkerProcessError

FAKE = r"""
import http.server, json, os, signal, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = int(os.environ.get("FAKE_READYZ", "200")) if self.path == "/readyz" else 200
        body = f"path {self.path}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(os.environ.get("FAKE_TERM_EXIT", "0"))))
print("starting: the http server listening line comes next")
print(json.dumps({"msg": "http server listening", "port": server.server_address[1], "host": "127.0.0.1"}))
server.serve_forever()
"""
WAIT_S = 30.0  # generous: the CI machine is two shared noisy cores


def fake(tmp_path: Path, **env: str) -> WorkerProcess:
    return WorkerProcess([sys.executable, "-c", FAKE], tmp_path / "fake.log", env=env)


def script(tmp_path: Path, code: str, **env: str) -> WorkerProcess:
    return WorkerProcess([sys.executable, "-c", code], tmp_path / "script.log", env=env)


def test_port_comes_from_the_json_log_line_and_get_answers_on_it(tmp_path: Path) -> None:
    with fake(tmp_path) as process:
        port = process.port(WAIT_S)
        assert process.logged_port() == port
        assert process.get("/readyz") == (200, b"path /readyz")
        assert process.get("/metrics") == (200, b"path /metrics")
        process.wait_ready(WAIT_S)
        assert process.log_lines()[0].startswith("starting:")
        assert f'"port": {port}' in process.log_lines()[1]


def test_a_503_is_a_status_and_wait_ready_names_it(tmp_path: Path) -> None:
    with fake(tmp_path, FAKE_READYZ="503") as process:
        assert process.get("/readyz")[0] == 503
        with pytest.raises(WorkerProcessError, match=r"not ready within 0\.5 s \(/readyz: 503\)"):
            process.wait_ready(0.5)
        assert process.alive


def test_stop_sends_sigterm_returns_the_exit_code_and_is_idempotent(tmp_path: Path) -> None:
    process = fake(tmp_path, FAKE_TERM_EXIT="3")
    process.port(WAIT_S)
    assert process.alive and process.returncode is None
    assert process.stop() == 3
    assert not process.alive and process.returncode == 3
    assert process.stop() == 3


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    process = fake(tmp_path, FAKE_IGNORE_TERM="1")
    process.port(WAIT_S)  # the handler is installed before the line is logged
    assert process.stop(grace_s=0.5) == -signal.SIGKILL


def test_signal_and_wait(tmp_path: Path) -> None:
    with fake(tmp_path, FAKE_TERM_EXIT="5") as process:
        process.port(WAIT_S)
        with pytest.raises(WorkerProcessError, match=r"still running after 0\.1 s"):
            process.wait(0.1)
        process.signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 5
        process.signal(signal.SIGTERM)  # exited already: nothing to signal, no error


def test_port_raises_with_the_log_tail_when_the_process_exits_first(tmp_path: Path) -> None:
    process = script(tmp_path, "print('config is broken'); raise SystemExit(2)")
    with pytest.raises(WorkerProcessError, match="exited before logging its http port") as caught:
        process.port(WAIT_S)
    assert "config is broken" in str(caught.value)
    assert f"--- {process.log_path} (exit 2) ---" in str(caught.value)
    with pytest.raises(WorkerProcessError, match="exited before logging its http port"):
        process.wait_ready(WAIT_S)


def test_port_raises_when_the_line_never_comes(tmp_path: Path) -> None:
    code = "import time; print('http server listening, but not as JSON', flush=True); time.sleep(60)"
    with script(tmp_path, code) as process:
        with pytest.raises(WorkerProcessError, match=r"no http port logged within 0\.3 s") as caught:
            process.port(0.3)
        assert "but not as JSON" in str(caught.value)
        assert process.logged_port() is None


def test_env_and_cwd_reach_the_process(tmp_path: Path) -> None:
    code = "import os; print(os.environ['GREETING'], os.environ['PYTHONUNBUFFERED'], os.getcwd())"
    process = WorkerProcess([sys.executable, "-c", code], tmp_path / "env.log", env={"GREETING": "hi"},
                            cwd=tmp_path)  # fmt: skip
    assert process.wait(WAIT_S) == 0
    assert process.log_lines() == [f"hi 1 {tmp_path}"]


def test_tail_names_the_log_and_keeps_the_last_lines(tmp_path: Path) -> None:
    process = script(tmp_path, "import sys\nfor i in range(50): print(i)\nprint('err', file=sys.stderr)")
    assert process.wait(WAIT_S) == 0
    assert process.tail(3).splitlines() == [f"--- {process.log_path} (exit 0) ---", "48", "49", "err"]
    assert len(process.log_lines()) == 51


def test_the_with_block_stops_the_process_also_on_failure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the test failed"), fake(tmp_path) as process:
        process.port(WAIT_S)
        raise ValueError("the test failed")
    assert not process.alive and process.returncode == 0


def test_start_runs_the_real_worker_whose_bad_config_shows_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with WorkerProcess.start(missing, tmp_path / "worker.log") as process:
        assert process.args == [sys.executable, "-m", "worker", "run", "--config", str(missing)]
        with pytest.raises(WorkerProcessError, match="cannot read") as caught:
            process.port(WAIT_S)
    assert "(exit 2)" in str(caught.value)
