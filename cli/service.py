"""factstore serve, worker and token: the service's processes and who may use them."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated

import typer

from factstore import api

from .options import DeviceOpt, JsonOpt
from .output import emit_json, table
from .progress import BARS

token_app = typer.Typer(help="API tokens for the HTTP service: create, list, revoke.", no_args_is_help=True)


def serve(
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; 0.0.0.0 for every interface (reads then need a token from others)."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    require_token: Annotated[
        bool, typer.Option("--require-token", help="Reads need a read token from every client, loopback too.")
    ] = False,
    public_reads: Annotated[
        bool, typer.Option("--public-reads", help="Reads are open to every client (writes still need a token).")
    ] = False,
    worker: Annotated[
        bool | None,
        typer.Option("--worker/--no-worker", help="Compute edits in this process (default: on SQLite only)."),
    ] = None,
    device: DeviceOpt = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A name clients reach this server by (repeatable); the bind address and the loopback names are always allowed, any other Host header is refused.",
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1, max=100_000, help="Connections and requests served at once; past them a client gets 503 at once."
        ),
    ] = 200,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="HTTP processes sharing the port (state is in the database); above 1 none runs a worker: run `factstore worker` beside them.",
        ),
    ] = 1,
) -> None:
    """Run the HTTP API and web page; with the embedded SQLite default, also one worker."""
    api.require_server()
    from factstore.server.app import ServerSettings  # the service's entry point: FastAPI is imported only here
    from factstore.server.app import serve as run

    settings = ServerSettings(
        require_token=require_token, public_reads=public_reads, worker=worker, device=device, allowed_hosts=allowed_host
    )
    if processes > 1:
        print(f"{processes} HTTP processes, none computing edits: run `factstore worker` beside them", file=sys.stderr)
    run(host, port, settings, max_connections=max_connections, processes=processes)


def worker(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Serve only this model (repeatable); default: every model."),
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Requests claimed per turn on a model, computed together in one optimisation where they can be.",
        ),
    ] = 8,
    device: DeviceOpt = None,
    poll: Annotated[float, typer.Option(min=0.05, max=60, help="Seconds between looks at an empty queue.")] = 1.0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, max=1024, help="CPU threads for torch; with several workers on one machine, split its cores."
        ),
    ] = None,
    until_idle: Annotated[
        bool,
        typer.Option(
            "--until-idle", help="Exit once the queue is empty (for a batch run) instead of waiting for more."
        ),
    ] = False,
    fair_batches: Annotated[
        int,
        typer.Option(
            min=1, max=10_000, help="Batches in a row on one model while another model waits, then it is given up."
        ),
    ] = 4,
    edits: Annotated[
        bool, typer.Option("--edits/--no-edits", help="Compute queued edits (--no-edits: a worker for jobs only).")
    ] = True,
    jobs: Annotated[
        bool,
        typer.Option(
            "--jobs/--no-jobs", help="Run compile, trace and publish jobs (--no-jobs: edits never wait behind one)."
        ),
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Compute queued edits and run jobs until SIGTERM or Ctrl-C (the edit being computed is finished first)."""
    stop = threading.Event()

    def finish(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    settings = api.WorkerSettings(
        models=list(model or []),
        batch=batch,
        device=device,
        poll=poll,
        threads=threads,
        fair_batches=fair_batches,
        edits=edits,
        jobs=jobs,
    )
    stats = api.run_worker(
        api.open_store(), settings, stop=stop, max_idle_turns=1 if until_idle else None, progress=BARS
    )
    emit_json(stats.to_json()) if json_out else print(
        f"worker stopped: {stats.computed} computed, {stats.failed} failed, {stats.jobs} jobs"
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who uses it; recorded as requested_by on each edit.")],
    scope: Annotated[str, typer.Option(help="read, write (submit edits, retract, compile) or admin.")] = "write",
    json_out: JsonOpt = False,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    info, token = api.create_token(api.open_store(), name, scope)
    if json_out:
        emit_json({"name": info.name, "scope": info.scope, "token": token})
    else:
        print(f"token {info.name} ({info.scope}): {token}")
        print("store it now: it is not shown again")


@token_app.command("list")
def token_list(json_out: JsonOpt = False) -> None:
    """Tokens by name and scope (never the secrets)."""
    tokens = api.list_tokens(api.open_store())
    if json_out:
        emit_json([t.__dict__ for t in tokens])
    else:
        table(
            "API tokens",
            ["name", "scope", "created", "revoked"],
            [(t.name, t.scope, t.created_at[:19], t.revoked) for t in tokens],
        )


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")], json_out: JsonOpt = False) -> None:
    """Revoke a token at once: requests carrying it are refused from now on."""
    info = api.revoke_token(api.open_store(), name)
    emit_json(info.__dict__) if json_out else print(f"token {info.name} revoked")
