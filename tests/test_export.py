"""gradprobe export: TensorBoard events, CSV tables and an offline W&B run, read back with each tool's own reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

import gradprobe
from gradprobe.cli.export_command import export
from gradprobe.errors import GradprobeError
from gradprobe.export import to_csv, to_tensorboard, to_wandb
from conftest import require

STEPS = 6
# tensorboard's event writer and reader import TensorFlow when it is installed (for file I/O): several seconds.
slow_tensorboard = pytest.mark.slow


@pytest.fixture(scope="module")
def two_optimizer_run(tmp_path_factory) -> gradprobe.Run:
    """An encoder trained by Adam and a head trained by SGD, clipped, per-layer statistics every 2 steps."""
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(5, 4), torch.nn.Linear(4, 1)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    opt_head = torch.optim.SGD(head.parameters(), lr=0.1)
    out = tmp_path_factory.mktemp("runs")
    with gradprobe.watch({"encoder": encoder, "head": head}, out=out, name="pair", every=2,
                         clip="global-norm:max=0.3") as rec:
        for _ in range(STEPS):
            x = torch.randn(8, 5)
            opt_enc.zero_grad(), opt_head.zero_grad()
            torch.nn.functional.mse_loss(head(encoder(x)), x[:, :1]).backward()
            opt_enc.step(), opt_head.step()
    return gradprobe.load_run(rec.path)


@pytest.fixture(scope="module")
def one_optimizer_run(tmp_path_factory) -> gradprobe.Run:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradprobe.watch(model, out=tmp_path_factory.mktemp("runs"), name="single", every=1) as rec:
        for _ in range(STEPS):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            opt.step()
    return gradprobe.load_run(rec.path)


def _expected_series(run: gradprobe.Run, prefixed: bool) -> dict[str, pd.DataFrame]:
    """The documented tags, built from the run's DataFrames: {tag: frame(step, time, value)}."""
    classes = {o["index"]: o["class"] for o in run.meta["optimizers"]}
    expected = {}
    columns = {"global_norm": "grad_norm/pre_clip", "global_norm_post": "grad_norm/post_clip",
               "clip_scale": "clip/scale", "clip_threshold": "clip/threshold", "loss": "loss"}
    for index, steps in run.steps.groupby("optimizer"):
        prefix = f"opt{index}-{classes[index]}/" if prefixed else ""
        for column, tag in columns.items():
            rows = steps[steps[column].notna()]
            if len(rows):
                expected[prefix + tag] = pd.DataFrame({"step": rows["step"], "time": rows["time"],
                                                       "value": rows[column]})
        times = steps.set_index("step")["time"]
        layers = run.layers[run.layers["optimizer"] == index]
        for name, rows in layers.groupby("name", observed=True):
            expected[f"{prefix}layer_grad_norm/{name}"] = pd.DataFrame(
                {"step": rows["step"], "time": times.loc[rows["step"]].to_numpy(), "value": rows["norm"]})
    return expected


def _read_tensorboard(directory: Path) -> dict[str, pd.DataFrame]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {
        tag: pd.DataFrame({"step": [e.step for e in events], "time": [e.wall_time for e in events],
                           "value": [float(make_ndarray(e.tensor_proto)) for e in events]})
        for tag in accumulator.Tags()["tensors"]
        for events in [accumulator.Tensors(tag)]
    }


def _assert_same_series(actual: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame], times=True):
    assert sorted(actual) == sorted(expected)
    for tag, frame in expected.items():
        got = actual[tag].sort_values("step")
        np.testing.assert_array_equal(got["step"], frame["step"], err_msg=tag)
        np.testing.assert_allclose(got["value"], frame["value"].astype(np.float64), rtol=1e-6, err_msg=tag)
        if times:
            np.testing.assert_allclose(got["time"], frame["time"], rtol=0, atol=1e-3, err_msg=tag)


@slow_tensorboard
def test_tensorboard_reader_sees_every_series_tagged_per_optimizer(two_optimizer_run, tmp_path):
    require("tensorboard", reason="TensorBoard export needs the `tensorboard` package")
    target = to_tensorboard(two_optimizer_run, tmp_path / "tb")
    assert target == tmp_path / "tb" / "pair"
    actual = _read_tensorboard(target)
    expected = _expected_series(two_optimizer_run, prefixed=True)
    assert {"opt0-Adam/clip/threshold", "opt1-SGD/grad_norm/post_clip", "opt1-SGD/layer_grad_norm/head.weight",
            "opt0-Adam/layer_grad_norm/encoder.bias"} <= set(actual)
    _assert_same_series(actual, expected)
    assert (two_optimizer_run.steps["clip_scale"] < 1).any()  # the run exercises clipping


@slow_tensorboard
def test_tensorboard_single_optimizer_tags_have_no_prefix_and_reexport_is_refused(one_optimizer_run, tmp_path):
    require("tensorboard", reason="TensorBoard export needs the `tensorboard` package")
    target = to_tensorboard(one_optimizer_run, tmp_path)
    actual = _read_tensorboard(target)
    assert "grad_norm/pre_clip" in actual and "clip/threshold" not in actual  # no clipping: no threshold
    _assert_same_series(actual, _expected_series(one_optimizer_run, prefixed=False))
    with pytest.raises(GradprobeError, match="already holds TensorBoard event files"):
        to_tensorboard(one_optimizer_run, tmp_path)


def test_csv_tables_hold_the_runs_steps_and_named_layers(two_optimizer_run, tmp_path):
    steps_path, layers_path = to_csv(two_optimizer_run, tmp_path / "csv")
    steps, layers = pd.read_csv(steps_path), pd.read_csv(layers_path)
    pd.testing.assert_frame_equal(steps, two_optimizer_run.steps, check_dtype=False)
    expected_layers = two_optimizer_run.layers.assign(name=lambda f: f["name"].astype(str))
    pd.testing.assert_frame_equal(layers, expected_layers, check_dtype=False)
    assert set(layers["name"]) == {"encoder.weight", "encoder.bias", "head.weight", "head.bias"}


def _read_wandb_history(run_dir: Path) -> dict[str, pd.DataFrame]:
    """History rows of an offline run, as wandb's own inspector prints them."""
    printed = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(run_dir), "--json"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    series: dict[str, list[tuple[int, float]]] = {}
    for line in printed.splitlines():
        record = json.loads(line)
        if record.get("type") != "history":
            continue
        step = record["history"]["step"]["num"] if record["history"]["step"] else 0
        for key, value in record["history"]["item"].items():
            if not key.startswith("_"):
                series.setdefault(key, []).append((int(step), float(value)))
    return {tag: pd.DataFrame(rows, columns=["step", "value"]) for tag, rows in series.items()}


@pytest.mark.slow
def test_wandb_offline_run_holds_every_series(two_optimizer_run, tmp_path):
    require("wandb", reason="W&B export needs the `wandb` package")
    run_dir = to_wandb(two_optimizer_run, tmp_path / "wb", project="gp-test")
    assert run_dir.parent == tmp_path / "wb" / "wandb" and run_dir.name.startswith("offline-run-")
    _assert_same_series(_read_wandb_history(run_dir), _expected_series(two_optimizer_run, prefixed=True),
                        times=False)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(export)
    return app


@slow_tensorboard
def test_export_command_writes_several_targets(one_optimizer_run, tmp_path):
    require("tensorboard", reason="TensorBoard export needs the `tensorboard` package")
    result = CliRunner().invoke(_cli(), [str(one_optimizer_run.path), "--tensorboard", str(tmp_path / "tb"),
                                         "--csv", str(tmp_path / "csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "csv" / "steps.csv").is_file() and (tmp_path / "csv" / "layers.csv").is_file()
    assert len(_read_tensorboard(tmp_path / "tb" / "single")["loss"]) == STEPS


def test_export_command_without_target_is_a_one_line_error(one_optimizer_run):
    result = CliRunner().invoke(_cli(), [str(one_optimizer_run.path)])
    assert isinstance(result.exception, GradprobeError)
    assert "--tensorboard DIR, --csv DIR or --wandb DIR" in str(result.exception)
