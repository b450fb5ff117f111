"""The Colab notebook runs headless on CPU with a tiny configuration, so it cannot rot."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import PROJECT_ROOT


def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEED_NOTEBOOK_TINY", "1")  # the kernel inherits this environment
    notebook = nbformat.read(os.path.join(PROJECT_ROOT, "experiments", "colab_tpu.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert any("cpu" in line for line in text)  # the devices cell
    assert any("test_accuracy" in line for line in text)  # the run printed its result
    assert (tmp_path / "runs" / "colab-cnn" / "curves.png").exists()
    assert (tmp_path / "runs" / "colab-ablation" / "ablation.png").exists()
    shown = [output for cell in notebook.cells for output in cell.get("outputs", [])
             if "image/png" in output.get("data", {})]
    assert len(shown) == 2  # the curves and the ablation chart
