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
    """Run the app; a UserError becomes one line on stderr and exit code 2, never a traceback."""
    from ssam_cli.errors import UserError

    try:
        app(standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own exit code and message
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
