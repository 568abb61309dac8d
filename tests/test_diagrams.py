"""The book's diagrams (scripts/make_diagrams.py) are valid SVG, and the committed book/figures/ are what the
script draws today: change a diagram's code, then rerun `.venv/bin/python scripts/make_diagrams.py`."""

import importlib.util
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_diagrams.py"
EXPECTED = ["pipeline", "transformer_block", "multihead_reshape", "kv_cache", "training_loop", "data_parallel",
            "lora"]


def load_script():
    spec = importlib.util.spec_from_file_location("make_diagrams", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every diagram, drawn once into a fresh folder: {name: path}."""
    folder = tmp_path_factory.mktemp("figures")
    paths = load_script().write_all(folder)
    return {path.stem: path for path in paths}


def test_every_expected_diagram_is_drawn(drawn):
    assert sorted(drawn) == sorted(EXPECTED)
    assert all(path.stat().st_size > 1000 for path in drawn.values())


@pytest.mark.parametrize("name", EXPECTED)
def test_diagram_is_svg(drawn, name):
    root = ElementTree.parse(drawn[name]).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert float(root.get("width").removesuffix("pt")) == 8 * 72  # 8 inches: the book column


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_diagram_matches_the_script(drawn, name):
    import matplotlib

    committed = ROOT / "book" / "figures" / f"{name}.svg"
    assert committed.exists(), f"{committed} is missing: run .venv/bin/python scripts/make_diagrams.py"
    if f"Matplotlib v{matplotlib.__version__}".encode() not in committed.read_bytes():
        pytest.skip(f"book/figures was drawn by another matplotlib than {matplotlib.__version__}: bytes differ")
    assert drawn[name].read_bytes() == committed.read_bytes(), (
        f"book/figures/{name}.svg differs from what scripts/make_diagrams.py draws: rerun it "
        "(with the matplotlib version pinned for the project, since the SVG records it)")


def test_drawing_is_deterministic(drawn, tmp_path):
    again = load_script().write("kv_cache", tmp_path)
    assert again.read_bytes() == drawn["kv_cache"].read_bytes()
