"""The analyst notebooks execute top to bottom (nbclient, a real IPython kernel).

They share one small demo run (``SKYSIEVE_DEMO_OUT``), made by the first notebook.
Outputs are never committed: a notebook with outputs fails ``test_outputs_stripped``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (test extra)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra)")
pytest.importorskip("matplotlib", reason="matplotlib is not installed")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["quickstart", "analyst", "models"]


def test_the_bundled_model_ships() -> None:
    """The notebooks run the configured bundled model: it ships in the package (never a skip)."""
    from pipeline import bundled, config

    checkpoint = bundled.resolve(config.get("classify.model"))
    assert checkpoint.is_file() and checkpoint.stat().st_size > 0
    assert checkpoint.with_suffix(".json").is_file(), "the bundled model has no card"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-demo") / "demo"


@pytest.mark.parametrize("name", NAMES)
def test_outputs_stripped(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{name}.ipynb has outputs; strip them (jupyter nbconvert --clear-output --inplace)"
    source = "\n".join(c.source for c in code)
    assert "._" not in source.replace("._repr", ""), f"{name}.ipynb uses a private helper"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name: str, demo_out: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYSIEVE_DEMO_OUT", str(demo_out))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    assert "catalogue:" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= {"quickstart": 1, "analyst": 5, "models": 1}[name]
    assert any(demo_out.glob("catalogue/part-*.parquet"))
