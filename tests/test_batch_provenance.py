"""Which samples went into each step: DataLoader wrapping, the batches table, findings and --skip-samples.

Every dataset here returns its own index as data, so the expected index lists come from the
batches the script received, not from gradprobe's bookkeeping.
"""

from __future__ import annotations

import json

import pytest

from gradprobe.store.sample_ranges import format_ranges, parse_ranges
from tests.conftest import require, run_cli

torch = require("torch")
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler  # noqa: E402

import gradprobe  # noqa: E402


class Indexed(Dataset):
    """Sample i is (i, features)."""

    def __init__(self, n: int):
        self.x = torch.randn(n, 3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i, self.x[i]


class Stream(IterableDataset):
    """Yields n samples (i, features), in order."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return ((i, torch.full((3,), float(i))) for i in range(self.n))


def train(loaders, tmp_path, accumulate: int = 1, epochs: int = 1):
    """Train on each batch of the zipped ``loaders`` (stepping every ``accumulate`` batches) under
    ``gradprobe.watch``; return the run's batches table and the index lists each step received."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    received: list[list[int]] = [[]]
    with gradprobe.watch(model, out=tmp_path, name="r") as rec:
        for _ in range(epochs):
            for n, batches in enumerate(zip(*loaders), 1):
                for index, x in batches:
                    received[-1].extend(int(i) for i in index)
                    model(x).square().mean().backward()
                if n % accumulate == 0:
                    opt.step()
                    opt.zero_grad()
                    received.append([])
    return gradprobe.load_run(rec.path).batches, [r for r in received if r]


def per_step(batches, loader=None):
    rows = batches if loader is None else batches[batches["loader"] == loader]
    return [sorted(i for s in frame["samples"] for i in parse_ranges(s)) for _, frame in rows.groupby("step")]


def test_sample_ranges_round_trip():
    indices = [9, 3, 4, 5, 17, 40, 41]
    text = format_ranges(indices)
    assert text == "3-5,9,17,40-41"
    assert parse_ranges(text) == sorted(indices)


def test_shuffled_loader_names_the_samples_of_every_step(tmp_path):
    train_loader = DataLoader(Indexed(40), batch_size=8, shuffle=True)
    batches, received = train([train_loader], tmp_path)
    assert set(batches["loader"]) == {"train_loader"}
    assert per_step(batches) == [sorted(r) for r in received]
    assert (batches["count"] == 8).all() and (batches["kind"] == "indices").all()


def test_batch_sampler_with_uneven_batches(tmp_path):
    sampler = BatchSampler(SequentialSampler(range(23)), batch_size=5, drop_last=False)
    loader = DataLoader(Indexed(23), batch_sampler=sampler)
    batches, received = train([loader], tmp_path)
    assert per_step(batches) == [sorted(r) for r in received]
    assert batches["count"].tolist() == [5, 5, 5, 5, 3]


def test_workers_prefetching_ahead_keep_batches_in_step(tmp_path):
    loader = DataLoader(Indexed(48), batch_size=4, shuffle=True, num_workers=2, prefetch_factor=3,
                        persistent_workers=True)
    batches, received = train([loader], tmp_path, epochs=2)
    assert per_step(batches) == [sorted(r) for r in received]
    assert batches["epoch"].tolist() == [0] * 12 + [1] * 12


def test_accumulated_batches_all_belong_to_their_step(tmp_path):
    loader = DataLoader(Indexed(36), batch_size=4, shuffle=True)
    batches, received = train([loader], tmp_path, accumulate=3)
    assert len(received) == 3
    assert per_step(batches) == [sorted(r) for r in received]
    assert batches.groupby("step").size().tolist() == [3, 3, 3]


def test_iterable_dataset_batches_are_numbered_by_position(tmp_path):
    stream = DataLoader(Stream(10), batch_size=4)
    batches, received = train([stream], tmp_path)
    assert (batches["kind"] == "positions").all()
    assert per_step(batches) == [sorted(r) for r in received]  # one pass in order: positions are the indices
    assert batches["count"].tolist() == [4, 4, 2]


def test_two_loaders_are_told_apart_and_evaluation_is_left_out(tmp_path):
    images = DataLoader(Indexed(12), batch_size=4, shuffle=True)
    texts = DataLoader(Indexed(12), batch_size=4, shuffle=True)
    val_loader = DataLoader(Indexed(8), batch_size=4)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = {"images": [], "texts": []}
    with gradprobe.watch(model, out=tmp_path, name="r") as rec:
        for (a, xa), (b, xb) in zip(images, texts):
            expected["images"].append(sorted(a.tolist()))
            expected["texts"].append(sorted(b.tolist()))
            (model(xa) + model(xb)).mean().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                for _, xv in val_loader:
                    model(xv)
    batches = gradprobe.load_run(rec.path).batches
    assert set(batches["loader"]) == {"images", "texts"}
    assert per_step(batches, "images") == expected["images"]
    assert per_step(batches, "texts") == expected["texts"]


def test_skipped_samples_never_reach_the_script(tmp_path):
    from gradprobe.pytorch.data_loaders import LoaderWatch
    from gradprobe.recording.batch_log import BatchLog

    log = BatchLog()
    watch = LoaderWatch(log, {"loader": frozenset({3, 4, 10})}).install()
    try:
        loader = DataLoader(Indexed(12), batch_size=4)
        seen = [i for index, _ in loader for i in index.tolist()]
    finally:
        watch.remove()
    assert seen == [0, 1, 2, 5, 6, 7, 8, 9, 11]
    assert watch.dropped == {"loader": 3}


CORRUPTED = """
import json, sys
import torch
from torch.utils.data import DataLoader, Dataset

BAD = 301
torch.manual_seed(0)


class Data(Dataset):
    def __init__(self):
        self.x = torch.randn(512, 8)
        self.y = self.x @ torch.randn(8, 1)
        self.x[BAD] *= 1e4  # one corrupted sample

    def __len__(self):
        return 512

    def __getitem__(self, i):
        return i, self.x[i], self.y[i]


train_loader = DataLoader(Data(), batch_size=16, shuffle=True)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=1e-9)
received = []
for epoch in range(3):
    for index, xb, yb in train_loader:
        received.append(index.tolist())
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
json.dump(received, open(sys.argv[1], "w"))
"""


def spike_findings(run_dir, cwd):
    result = run_cli("report", str(run_dir), "--format", "json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [f for f in json.loads(result.stdout)["findings"] if f["kind"] == "spike"]


@pytest.mark.slow
def test_spike_names_the_corrupted_sample_and_the_rerun_without_it_is_clean(tmp_path, write_script):
    script = write_script(CORRUPTED)
    first = run_cli("profile", "--out", "runs", "--name", "a", "-q", str(script), "--", "a.json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    received = json.loads((tmp_path / "a.json").read_text())
    bad_steps = [step for step, indices in enumerate(received) if 301 in indices]
    [spike] = spike_findings(tmp_path / "runs" / "a", tmp_path)
    assert spike["evidence"]["max_step"] in bad_steps
    named = {b["step"]: parse_ranges(b["samples"]) for b in spike["batches"]}
    assert named[spike["evidence"]["max_step"]] == sorted(received[spike["evidence"]["max_step"]])
    assert all(301 in named[step] for step in spike["evidence"]["spike_steps"])
    skip_file = tmp_path / "runs" / "a" / "skip-samples.json"
    assert f"--skip-samples {skip_file}" in spike["advice"]
    skipped = set(parse_ranges(json.loads(skip_file.read_text())["loaders"]["train_loader"]))
    assert 301 in skipped

    again = run_cli("run", "--skip-samples", str(skip_file), "--out", "runs", "--name", "b", "-q", str(script),
                    "--", "b.json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((tmp_path / "b.json").read_text())
    assert not skipped & {i for indices in rerun for i in indices}
    assert spike_findings(tmp_path / "runs" / "b", tmp_path) == []


def test_batches_sliced_by_hand_are_fingerprinted(tmp_path):
    x = torch.randn(96, 5)
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    starts = [0, 32, 0, 64]  # the third step sees the first step's rows again
    with gradprobe.watch(model, out=tmp_path, name="r") as rec:
        for start in starts:
            model(x[start:start + 32]).mean().backward()
            opt.step()
            opt.zero_grad()
    batches = gradprobe.load_run(rec.path).batches
    assert batches["step"].tolist() == [0, 1, 2, 3] and (batches["kind"] == "fingerprint").all()
    prints = batches["samples"].tolist()
    assert all(p.startswith("shape=[32, 5] float32 crc=") for p in prints)
    assert prints[0] == prints[2] and len({prints[0], prints[1], prints[3]}) == 3


def test_nonfinite_and_spike_findings_name_their_steps_batches():
    import pandas as pd

    from gradprobe.analysis.batch_blame import name_batches, skip_samples
    from gradprobe.analysis.findings import Finding

    batches = pd.DataFrame({
        "step": [6, 6, 7, 9], "optimizer": [0, 0, 0, 0], "rank": [0] * 4, "loader": ["train_loader"] * 4,
        "epoch": [1] * 4, "kind": ["indices"] * 4, "first": [4480, 10, 0, 64], "count": [64, 2, 64, 64],
        "samples": ["4480-4543", "10-11", "0-63", "64-127"]})
    nonfinite = Finding("nonfinite", "critical", [], (6, 8), {"optimizer": 0}, "Gradients became NaN/Inf.")
    spike = Finding("spike", "warning", [], (7, 9), {"optimizer": 0, "max_step": 9, "spike_steps": [7, 9]}, "x.")
    other = Finding("explosion", "warning", [], (6, 9), {"optimizer": 0}, "y.")
    name_batches([nonfinite, spike, other], batches, "runs/a", "train.py")
    assert [b["samples"] for b in nonfinite.batches] == ["4480-4543", "10-11"]
    assert "step 6: samples 4480-4543 of loader `train_loader` (epoch 1)" in nonfinite.advice
    assert "`gradprobe run --skip-samples runs/a/skip-samples.json train.py`" in nonfinite.advice
    assert [b["step"] for b in spike.batches] == [9, 7]  # the worst step first
    assert other.batches == [] and "batches" not in other.to_dict()
    assert nonfinite.to_dict()["batches"][0] == {"step": 6, "optimizer": 0, "loader": "train_loader", "epoch": 1,
                                                 "kind": "indices", "count": 64, "samples": "4480-4543"}
    assert skip_samples([nonfinite]) == {"train_loader": [10, 11, *range(4480, 4544)]}
