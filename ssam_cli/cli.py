"""The `ssam` command line. Thin: parse, call the pipeline, render; errors a user can fix are one line.

Nothing heavy is imported at module level, so `ssam --help` answers without loading torch.
"""

from __future__ import annotations

import sys

import typer

from ssam_cli import __version__
from ssam_cli.commands.merge import merge, validate
from ssam_cli.commands.methods import methods
from ssam_cli.commands.push import push
from ssam_cli.commands.spectrum import inspect_spectrum

app = typer.Typer(
    name="ssam",
    help="Merge fine-tuned specialists of one base model into one model, without training and without data.\n\n"
         "Write a recipe (docs/recipe.md), check it with `ssam validate`, choose k with `ssam inspect-spectrum`, "
         "run `ssam merge`, publish with `ssam push`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's help formatter alone costs ≈ 0.1 s of start-up (issue 16: ≤ 0.2 s)
)
app.command()(merge)
app.command()(validate)
app.command(name="inspect-spectrum")(inspect_spectrum)
app.command()(push)
app.command()(methods)


def _version(value: bool) -> None:
    if value:
        print(f"ssam {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Merge fine-tuned specialists of one base model into one model."""


def main() -> None:
    """Run the app. A UserError or an OS error becomes one line on stderr and exit code 2, a usage error click's
    message and exit code 2, SIGINT or SIGTERM one line and exit code 128 + the signal (130 for Ctrl-C) after the
    temporary output is removed; never a traceback for any of them."""
    from ssam_cli.errors import Interrupted, UserError, describe_os_error

    _on_signals_unwind()
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        _fail(f"error: {e}", e.exit_code)
    except Interrupted as e:
        _fail(f"interrupted ({e}): stopped; any partial output was removed", e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted: stopped; any partial output was removed", 130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        _fail(f"error: {describe_os_error(e)}", UserError.exit_code)
    except Exception as e:
        if isinstance(e, _click_exceptions()):  # usage errors: click's message and exit code (2)
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)  # Typer returns the code of a typer.Exit raised in a command


def _fail(line: str, code: int) -> None:
    print(line.splitlines()[0] if line else line, file=sys.stderr)
    sys.exit(code)


def _click_exceptions() -> tuple[type, ...]:
    """Click's exception class, and the vendored copy recent Typer versions raise instead."""
    found: list[type] = []
    try:
        from typer._click.exceptions import ClickException as Vendored

        found.append(Vendored)
    except ImportError:
        pass
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


def _on_signals_unwind() -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread, so `with` blocks unwind and remove the temporary
    output; a second signal while unwinding exits at once (the next run removes what is left, and says so)."""
    import os
    import signal

    from ssam_cli.errors import Interrupted

    def handler(signum: int, frame: object) -> None:
        if getattr(handler, "fired", False):
            print(f"interrupted again ({signal.Signals(signum).name}): exiting now", file=sys.stderr)
            os._exit(128 + signum)
        handler.fired = True  # type: ignore[attr-defined]
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
