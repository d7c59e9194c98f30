"""Entry point: `factstore`. Torch is imported only by the commands that need a model."""

from __future__ import annotations

import sys

import typer

from factstore import api

from . import ask, db, edits, evaluate, hub, models, releases, service, stats, trace
from .errors import report

app = typer.Typer(
    name="factstore",
    help="Edit facts in language models (ROME), keep every edit in a database, rebuild and publish edited models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(models.app, name="model")
app.add_typer(stats.app, name="stats")
app.add_typer(edits.app, name="edit")
app.add_typer(releases.app, name="releases")
app.command(name="ask")(ask.ask)
app.command(name="compile")(releases.compile_)
app.command(name="publish")(hub.publish)
app.command(name="pull")(hub.pull)
app.command(name="trace")(trace.trace)
app.command(name="eval")(evaluate.eval_)
app.command(name="serve")(service.serve)
app.command(name="worker")(service.worker)
app.add_typer(service.token_app, name="token")


def main(argv: list[str] | None = None) -> None:
    """Run the command line on ARGV (default sys.argv[1:]); exits with its code."""
    try:
        api.check_settings()  # a bad FACTSTORE_* value stops every command at start, in one line
        code = app(args=argv, standalone_mode=False)  # usage errors come back as exceptions: one line, exit 1
    except SystemExit:
        raise
    except BaseException as exc:  # every failure gets one readable line
        sys.exit(report(exc))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
