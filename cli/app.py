"""The root `mta` command: command groups are attached here, errors become exit codes."""

from __future__ import annotations

import os
import sys

import typer

from mta.cli import output
from mta.cli.adapter import adapter_app
from mta.cli.bank import bank_app
from mta.cli.data import data_app
from mta.cli.errors import describe, exit_code_for
from mta.cli.eval import eval_command, eval_report_command
from mta.cli.options import CacheDirOpt, DbUrlOpt, StoreUrlOpt, check_locations
from mta.cli.publish import publish_command
from mta.cli.serve import serve_command
from mta.cli.storage import storage_app, storage_fsck, storage_gc, storage_init
from mta.cli.user import user_app

app = typer.Typer(
    name="mta",
    help="Merge-then-Adapt adapter registry: per-user LoRAs from a fused anchor bank.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    db: DbUrlOpt = None,
    store: StoreUrlOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Merge-then-Adapt adapter registry: per-user LoRAs from a fused anchor bank."""
    check_locations({"db": db, "store": store, "cache_dir": cache_dir})
    # The values stay in the root context's params; registry commands read them from there
    # (mta.cli.options.locations): `mta --db URL user list`.


app.add_typer(adapter_app, name="adapter")
app.command("init")(storage_init)
app.add_typer(bank_app, name="bank")
app.add_typer(user_app, name="user")
app.add_typer(storage_app, name="storage")
app.command("gc")(storage_gc)
app.command("fsck")(storage_fsck)
app.command("eval")(eval_command)
app.command("eval-report")(eval_report_command)
app.add_typer(data_app, name="data")
app.command("serve")(serve_command)
app.command("publish")(publish_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected errors print one line and exit 1 or 3 (MTA_DEBUG=1: traceback)."""
    try:
        # Without standalone mode Click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped below, bugs re-raised
        # Typer raises the exceptions of its vendored click, which are not click's classes:
        # recognize usage errors by their interface (show + exit_code) instead.
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, typer.Abort):
            output.error("aborted")
            sys.exit(1)
        code = exit_code_for(exc)
        if code is None or os.environ.get("MTA_DEBUG") == "1":
            raise
        output.error(describe(exc))
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
