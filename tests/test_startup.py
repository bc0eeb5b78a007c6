"""`gradprobe profile` starts a script with nothing loaded that the script did not import, and still records.

Libraries that change how a script runs once imported must not be loaded
before its first line: numpy (and the BLAS it loads, which reads
``OPENBLAS_NUM_THREADS`` only then), pandas, pyarrow, scipy, matplotlib, rich,
libcst and the frameworks. The command line itself is parsed with Typer (which
coerces values through pydantic), so those two are loaded; gradprobe's own
modules that would bring in the libraries above (the store's reader, the clip
policies, the analysis, the renderers) are not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gradprobe
from conftest import require, run_cli

TESTS_DIR = Path(__file__).resolve().parent

NOT_LOADED = ("numpy", "pandas", "pyarrow", "scipy", "matplotlib", "rich", "libcst", "torch", "tensorflow", "keras",
              "gradprobe.store.reader", "gradprobe.policies", "gradprobe.analysis", "gradprobe.reports.live_display")

# The script's first lines: what is loaded when it starts, written before it imports anything.
START_PROBE = """\
import json, sys
with open("loaded.json", "w") as f:
    json.dump(sorted(sys.modules), f)
"""

TRAIN = START_PROBE + """\
import torch
sys.path.insert(0, {tests!r})
from test_torch_loops import dump, grads_of, mlp, params_of, snapshot
torch.manual_seed(0)
model = mlp(4, 8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
expected = []
for step in range(12):
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    expected.append(snapshot(grads_of(model), params_of(model), loss))
    opt.step()
dump("expected.json", {{"opt": expected}})
"""


def loaded_at_start(folder) -> list[str]:
    """The modules (of :data:`NOT_LOADED`, or inside them) that were loaded when the script started."""
    loaded = json.loads((folder / "loaded.json").read_text())
    return [m for m in loaded if any(m == name or m.startswith(name + ".") for name in NOT_LOADED)]


def test_probe_sees_what_the_script_itself_imported(tmp_path):
    (tmp_path / "s.py").write_text("import numpy\n" + START_PROBE)
    result = run_cli("profile", "s.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "numpy" in loaded_at_start(tmp_path)


@pytest.mark.parametrize("options", [[], ["--seed", "7"]])
def test_an_empty_script_starts_without_heavy_libraries(tmp_path, options):
    (tmp_path / "s.py").write_text(START_PROBE)
    result = run_cli("profile", *options, "s.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert loaded_at_start(tmp_path) == []
    assert "gradprobe: run finished" in result.stderr


def test_a_torch_script_starts_without_them_and_its_gradients_are_recorded(tmp_path):
    require("torch")
    from test_torch_loops import assert_recorded, load_expected

    (tmp_path / "train.py").write_text(TRAIN.format(tests=str(TESTS_DIR)))
    result = run_cli("profile", "--out", "runs", "--name", "run", "--every", "1", "--flush-every", "5", "train.py",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert loaded_at_start(tmp_path) == []
    run = gradprobe.load_run(tmp_path / "runs" / "run")
    assert run.meta["status"] == "finished" and run.meta["progress"]["flushes"] >= 3
    assert_recorded(run, load_expected(tmp_path / "expected.json")["opt"])


def test_seed_reaches_numpy_when_the_script_imports_it(tmp_path):
    (tmp_path / "s.py").write_text(START_PROBE + "import numpy as np\nprint(json.dumps(np.random.rand(3).tolist()))\n")
    result = run_cli("profile", "--seed", "7", "s.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert loaded_at_start(tmp_path) == []
    assert json.loads(result.stdout) == np.random.RandomState(7).rand(3).tolist()
