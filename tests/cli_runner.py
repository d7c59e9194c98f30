"""The command line in-process: `factstore.cli.main.main` with arguments, its output and exit
code captured through the same error table as a real run. Tests whose subject is not a
process use this; a real process (loading torch and transformers again, ~3-5 s) is kept for
kills, signals, concurrent writers and the import-time checks."""

from __future__ import annotations

import contextlib
import io
import json
import signal
from dataclasses import dataclass

import torch

from factstore.cli.main import main


@dataclass(frozen=True)
class Done:
    """What a run left, named as subprocess.CompletedProcess names it."""

    returncode: int
    stdout: str
    stderr: str


def run(*args: str, check: bool = True) -> Done:
    """`factstore ARGS...` in this process. Signal handlers and torch's thread count, which a
    command may set for its own process (`worker`), are put back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
    done = Done(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"factstore {' '.join(args)} exited {code}: {done.stderr}")
    return done


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json").stdout)
