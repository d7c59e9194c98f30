"""Run `factstore serve` and `factstore worker` as real processes for the tests that need them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "factstore.cli.main", *args]
    if log is None:
        return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)


def serve(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A `factstore serve` on a free port, once it answers /healthz."""
    port = free_port()
    process = start("serve", "--port", str(port), *args, env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}" + (f": {log.read_text()[-2000:]}" if log else ""))
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("serve did not answer within 90 s")


def stop(process: subprocess.Popen, timeout: float = 60) -> int:
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
