"""The Colab notebook runs headless on CPU with a tiny configuration, so it cannot rot."""

import base64
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow  # the notebook, executed


def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEED_NOTEBOOK_TINY", "1")  # the kernel inherits this environment
    notebook = nbformat.read(os.path.join(PROJECT_ROOT, "experiments", "colab_tpu.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert any("cpu" in line for line in text)  # the devices cell
    assert any("test_accuracy" in line for line in text)  # the run printed its result
    shown = [base64.b64decode(output["data"]["image/png"]) for cell in notebook.cells
             for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    # the curves and the ablation chart, as the runs wrote them
    assert shown == [(tmp_path / "runs" / "colab-cnn" / "curves.png").read_bytes(),
                     (tmp_path / "runs" / "colab-ablation" / "ablation.png").read_bytes()]
