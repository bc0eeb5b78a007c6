"""``gradprobe apply``: write a clip policy into a training script, shown as a unified diff."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from gradprobe.errors import GradprobeError, visible


def apply(
    script: Path = typer.Argument(..., help="The training script to patch."),
    clip: Optional[str] = typer.Option(None, "--clip", "-c", help="Clip spec, e.g. global-norm:max=1.0."),
    from_file: Optional[Path] = typer.Option(None, "--from", help="A recommendation file (RUN/recommendation.json) "
                                             "or a run directory holding one; its first spec is used."),
    write: bool = typer.Option(False, "--write", "-w", help="Also edit SCRIPT in place, after showing the diff."),
) -> None:
    """Add clipping to a training script's source and print the change as a unified diff.

    [bold]gradprobe apply train.py --clip global-norm:max=1.0[/bold]
    [bold]gradprobe apply train.py --from gradprobe-runs/RUN/recommendation.json --write[/bold]

    PyTorch: the clip goes right before every optimizer step
    ([bold]opt.step()[/bold], [bold]scaler.step(opt)[/bold]), after [bold]scaler.unscale_(opt)[/bold],
    which is added when missing; with gradient accumulation, inside the
    branch that steps. global-norm and value become plain
    torch.nn.utils.clip_grad_norm_ / clip_grad_value_ calls; other policies
    become a gradprobe.clipper, created once after its optimizer.

    Keras: the optimizer constructors get global_clipnorm (global-norm),
    clipnorm (layer-norm) or clipvalue (value); a custom loop's own
    tf.clip_by_global_norm line is removed.

    An existing clip call before a step is updated, not duplicated, and a
    second run changes nothing. When a step cannot be clipped safely, each
    line and reason is printed and the script is left unchanged. Apply the
    diff with [bold]--write[/bold], or with [bold]patch -p0[/bold].
    """
    from gradprobe.store.recommendation_file import load_recommended_spec
    from gradprobe.source_patch import patch_file, write_patch

    if (clip is None) == (from_file is None):
        raise GradprobeError("give the clip policy with exactly one of --clip SPEC or --from RUN/recommendation.json")
    spec = clip if clip is not None else load_recommended_spec(from_file)
    patch = patch_file(script, spec)
    for note in patch.notes:
        print(f"gradprobe: note: {note}", file=sys.stderr)
    if not patch.changed:
        print(f"gradprobe: {visible(script)} already applies {patch.spec}; nothing to change", file=sys.stderr)
        return
    sys.stdout.write(patch.diff())
    if write:
        write_patch(patch, script)
        print(f"gradprobe: wrote {visible(script)}", file=sys.stderr)
