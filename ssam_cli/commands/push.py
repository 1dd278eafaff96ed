"""`ssam push`: publish a finished output folder on the Hugging Face Hub, with a fresh model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def push(
    output_dir: Path = typer.Argument(..., help="An ssam output folder (with its manifest.json).", show_default=False),
    repo_id: str = typer.Argument(..., help="The Hub repo to push to, org/name; created if missing.",
                                  show_default=False),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (an existing repo keeps "
                                                          "its visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision", "--branch",
                                           help="Push to this branch (created from main if missing)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request against main instead of "
                                                              "committing to it."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", "-m", help="The commit title."),
    token: Optional[str] = typer.Option(None, "--token", help="A Hub token with write access; default: HF_TOKEN or "
                                                              "the cached `hf auth login`. Never printed.",
                                        show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Verify the folder, print the files and the card; "
                                                          "contact the Hub not at all."),
) -> None:
    """Upload OUTPUT_DIR to the Hub repo REPO_ID, if it is exactly what `ssam merge` wrote.

    Every file listed in manifest.json must be present with its recorded size and sha256, and nothing else
    may have been added; the model card (README.md) is regenerated from the manifest. Pushing the same folder
    twice changes nothing. Example:

        ssam push ./merged my-org/vicuna-av-ssam --private
    """
    from ssam_cli.commands.render import human_bytes
    from ssam_cli.hub.push import prepare_upload, push_upload

    upload = prepare_upload(output_dir, repo_id)
    branch = revision or "main"
    target = f"{repo_id} ({'pull request against main' if create_pr else 'branch ' + branch})"
    if dry_run:
        typer.echo(f"dry run: would push {len(upload.files)} files ({human_bytes(upload.total_bytes, 1)}) to {target}:")
        for path, size in upload.files:
            typer.echo(f"  {path}  {human_bytes(size, 1)}")
        typer.echo("\n--- README.md (model card) ---")
        typer.echo(upload.card, nl=False)
        return
    pushed = push_upload(upload, private=private, revision=revision, create_pr=create_pr,
                         commit_message=commit_message, token=token)
    if not pushed.changed:
        typer.echo(f"{target}: already up to date, nothing pushed (commit {pushed.commit[:12]})")
    elif pushed.pr_url:
        typer.echo(f"{target}: opened {pushed.pr_url} (commit {pushed.commit[:12]})")
    else:
        typer.echo(f"{target}: pushed {len(upload.files)} files, {pushed.url}")
