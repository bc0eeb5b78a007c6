"""Exporting a recorded run to the tools people already watch: TensorBoard, CSV, Weights & Biases.

Every target receives the same series, named by :func:`scalar_series`:
the global gradient norm before and after clipping, the clip scale and
threshold, the loss, and each layer's gradient norm. The writers are the
libraries' own; their packages are imported only when their target is used.
"""

from gradprobe.export.csv_tables import to_csv
from gradprobe.export.scalars import scalar_series
from gradprobe.export.tensorboard_events import to_tensorboard
from gradprobe.export.wandb_offline import to_wandb

__all__ = ["scalar_series", "to_csv", "to_tensorboard", "to_wandb"]
