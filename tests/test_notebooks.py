"""The notebooks execute end to end (small settings) and compute what they claim.

Each notebook runs in a fresh kernel of this interpreter (ipykernel) with JAXPOST_NOTEBOOK_SMOKE=1, and
writes the values it computed as JSON to JAXPOST_NOTEBOOK_RESULTS; the tests check those values.
"""

import json
import os
import sys

import nbclient
import nbformat
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
KERNEL = "jaxpost-tests"


def _use_this_interpreter_as_kernel(tmp_path, monkeypatch) -> str:
  """A kernel spec running this interpreter, found first through JUPYTER_PATH: the notebooks see exactly the
  packages the tests see, whatever `python3` kernels the machine or user has installed."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxpost tests", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  return KERNEL


def run_notebook(name: str, tmp_path, monkeypatch) -> dict:
  """Executes notebooks/NAME.ipynb with small settings; returns the JSON of results it wrote."""
  results = tmp_path / "results.json"
  monkeypatch.setenv("JAXPOST_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAXPOST_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("JAXPOST_NOTEBOOK_RESULTS", str(results))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as a user has, not the test suite's 8 fake ones
  monkeypatch.setenv("MPLBACKEND", "Agg")
  kernel = _use_this_interpreter_as_kernel(tmp_path, monkeypatch)
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, kernel_name=kernel, timeout=600,
                          resources={"metadata": {"path": NOTEBOOKS}}).execute()
  return json.loads(results.read_text())


def test_notebooks_are_valid_and_start_with_install_and_backend_cells():
  names = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
  assert names == ["01_quickstart.ipynb", "02_compose_losses.ipynb", "03_dms_hyperscaling.ipynb"]
  for name in names:
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(notebook)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert "pip\", \"install\"" in code[0] and "Colab" in code[0]
    assert "jax.default_backend()" in code[1] and "jax.devices()" in code[1]
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{name}: clear outputs"


def test_quickstart_notebook(tmp_path, monkeypatch):
  results = run_notebook("01_quickstart", tmp_path, monkeypatch)
  accuracy = results["accuracy"]
  assert list(accuracy) == ["initial", "sft", "grpo"]
  assert all(0.0 <= a <= 1.0 for a in accuracy.values())
  assert accuracy["initial"] == 0.0  # a random model never writes a correct answer line
  assert os.path.getsize(results["plot"]) > 1000


def test_compose_losses_notebook(tmp_path, monkeypatch):
  results = run_notebook("02_compose_losses", tmp_path, monkeypatch)
  names = set(results["metric_names"])
  assert {"loss", "grpo/loss", "grpo/entropy", "entropy/loss", "entropy/entropy"} <= names
  assert all(n == "loss" or n.split("/")[0] in ("grpo", "entropy") for n in names)
  assert results["grad_scale"] > 1e-4 and results["grad_error"] <= 1e-5 * results["grad_scale"]
  assert abs(results["composed_loss"] - results["builtin_loss"]) <= 1e-6
  for step in results["history"]:  # the logged total is the weighted sum of the logged terms
    assert step["entropy/loss"] == -step["entropy/entropy"]
    assert abs(step["loss"] - (step["grpo/loss"] + results["coef"] * step["entropy/loss"])) <= 1e-6


def test_dms_hyperscaling_notebook(tmp_path, monkeypatch):
  from jaxpost import data
  results = run_notebook("03_dms_hyperscaling", tmp_path, monkeypatch)
  models = results["models"]
  assert list(models) == ["dense", "dms_cr2"] and 0.0 <= results["sft_accuracy"] <= 1.0
  # Dense memory: every prompt + reference completion token stays in the cache, counted here independently.
  tokenizer = data.arith_tokenizer()
  records = data.make_dataset(results["task"], "test", results["num_eval"], seed=results["seed"] + 1)
  lengths = [len(e.tokens_T) for e in data.encode_records(tokenizer, records)]
  assert models["dense"]["kv_tokens"] == pytest.approx(np.mean(lengths))
  assert models["dense"]["compression"] == 1.0
  dms = models["dms_cr2"]
  assert 0 < dms["kv_tokens"] <= models["dense"]["kv_tokens"]
  assert dms["compression"] == pytest.approx(models["dense"]["kv_tokens"] / dms["kv_tokens"])
  for row in models.values():
    assert row["votes"]["1"] == row["accuracy"] and all(0.0 <= a <= 1.0 for a in row["votes"].values())
  assert os.path.getsize(results["plot"]) > 1000
