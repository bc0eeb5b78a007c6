"""``gradprobe export``: a recorded run's scalars to TensorBoard, CSV or Weights & Biases."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from gradprobe.errors import GradprobeError, visible
from gradprobe.store import DEFAULT_ROOT


def export(
    run: Optional[str] = typer.Argument(None, help="Run directory or name (default: the latest run)."),
    root: Path = typer.Option(Path(DEFAULT_ROOT), "--root", help="Where to look for run names."),
    tensorboard: Optional[Path] = typer.Option(
        None, "--tensorboard", metavar="DIR",
        help="Write TensorBoard event files to DIR/<run name> (view with `tensorboard --logdir DIR`)."),
    csv: Optional[Path] = typer.Option(None, "--csv", metavar="DIR",
                                       help="Write DIR/steps.csv and DIR/layers.csv (with layer names)."),
    wandb: Optional[Path] = typer.Option(
        None, "--wandb", metavar="DIR",
        help="Write an offline Weights & Biases run under DIR (upload it later with `wandb sync`)."),
    wandb_project: str = typer.Option("gradprobe", "--wandb-project", help="W&B project of the exported run."),
) -> None:
    """Export a run's gradient norms, clip scale and loss to the tools you already use.

    [bold]gradprobe export RUN --tensorboard tb/[/bold]  then  [bold]tensorboard --logdir tb/[/bold]
    [bold]gradprobe export RUN --csv out/[/bold]
    [bold]gradprobe export RUN --wandb wb/[/bold]  then  [bold]wandb sync wb/wandb/offline-run-*[/bold]

    Several targets can be given at once. Series: grad_norm/pre_clip,
    grad_norm/post_clip, clip/scale, clip/threshold, loss and
    layer_grad_norm/<layer>; with several optimizers each tag starts with the
    optimizer (opt1-SGD/grad_norm/pre_clip).
    """
    from gradprobe.export import to_csv, to_tensorboard, to_wandb
    from gradprobe.store import resolve_run

    if tensorboard is None and csv is None and wandb is None:
        raise GradprobeError("export needs a target: --tensorboard DIR, --csv DIR or --wandb DIR")
    target = resolve_run(run, root)
    if tensorboard is not None:
        path = to_tensorboard(target, tensorboard)
        print(f"gradprobe: wrote TensorBoard events to {visible(path)}", file=sys.stderr)
    if csv is not None:
        for path in to_csv(target, csv):
            print(f"gradprobe: wrote {visible(path)}", file=sys.stderr)
    if wandb is not None:
        path = to_wandb(target, wandb, wandb_project)
        print(f"gradprobe: wrote offline W&B run {visible(path)} (upload with `wandb sync {visible(path)}`)", file=sys.stderr)
