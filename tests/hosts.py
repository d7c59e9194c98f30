"""Separate hosts on one machine (tests/test_hosts.py): each a network namespace with its own
address on one bridge, its own host name, and its own files at one path (MOUNT): every
process of a host sees that host's folder there and no other host's, so a path recorded by one
host (a C file, a release folder) means nothing on another, as on real machines."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from service_process import REPO


def available() -> str | None:
    """Why namespaces cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "mount", "runuser") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing"
    probe = f"fsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()[:120]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


class Hosts:
    """Hosts on a bridge 10.N.M.0/24 (the test's own, from its pid), the driver at .1."""

    def __init__(self, root: Path) -> None:
        self.root, self.tag = root, f"{os.getpid() % 100000}"
        self.mount = root / "host"  # where each host's own folder appears to its processes
        self.mount.mkdir()
        self.prefix = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.bridge = f"fsbr{self.tag}"
        self.names: dict[str, str] = {}  # host name -> address
        self.processes: list[subprocess.Popen] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def ns(self, name: str) -> str:
        return f"fs{self.tag}{name}"

    def folder(self, name: str) -> Path:
        """The host's own files (seen by its processes at self.mount)."""
        return self.root / "hosts" / name

    def add(self, name: str) -> str:
        """A host on the bridge; returns its address."""
        ns, address = self.ns(name), f"{self.prefix}.{len(self.names) + 2}"
        inside, outside = f"fi{self.tag}{len(self.names)}", f"fo{self.tag}{len(self.names)}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("addr", "add", f"{address}/24", "dev", inside, ns=ns)
        _ip("link", "set", inside, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.folder(name).mkdir(parents=True)
        self.names[name] = address
        return address

    def link(self, name: str, up: bool) -> None:
        """Plug the host's cable in or pull it (its processes keep running, cut off)."""
        index = list(self.names).index(name)
        _ip("link", "set", f"fo{self.tag}{index}", "up" if up else "down")

    def command(self, name: str, argv: list[str]) -> list[str]:
        """ARGV run on host NAME: in its namespace, under its host name, with its folder at self.mount."""
        setup = f'hostname {name} && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        wrapper = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", setup, "sh"]
        return ["ip", "netns", "exec", self.ns(name), *wrapper, str(self.folder(name)), str(self.mount), *argv]

    def start(self, name: str, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        with open(self.root / f"{name}-{log}.log", "w") as out:
            process = subprocess.Popen(
                self.command(name, argv), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def run(self, name: str, argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
        done = subprocess.run(
            self.command(name, argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"{name}: {' '.join(argv[-6:])} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def log(self, name: str, log: str) -> str:
        path = self.root / f"{name}-{log}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in self.names:
            pids = subprocess.run(["ip", "netns", "pids", self.ns(name)], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
