"""Turn the chapter sources book/src/NN_name.py into executed notebooks book/NN_name.ipynb.

Each source is a jupytext "percent" script (`# %%` code cells, `# %% [markdown]` text cells).
It is executed top to bottom in a fresh kernel of this Python (cwd = book/), and saved with its
outputs but without timing or machine-specific metadata, so rebuilding an unchanged chapter on the
same machine leaves the .ipynb byte-identical. A cell that raises stops the build (exit status 1).

    python scripts/build_notebooks.py                       # every book/src/*.py
    python scripts/build_notebooks.py book/src/01_tokenization.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class CurrentPythonKernels(KernelSpecManager):
    """Always start the kernel with this interpreter (the project's .venv), whatever kernels are registered."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        # log level ERROR: no "running over TCP without encryption" warning on every build.
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.log_level=ERROR"]
        return KernelSpec(argv=argv, display_name=KERNELSPEC["display_name"], language="python")


def merge_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) pieces: how a print is split depends on timing, not on the code."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if output.output_type == "stream" and previous and previous.output_type == "stream" and previous.name == output.name:
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop timing and machine-specific metadata; number cells 1..n; stable cell ids."""
    nb.metadata = nbformat.from_dict({
        "kernelspec": dict(KERNELSPEC),
        # Keep what renderers need for syntax highlighting, not the interpreter's exact version.
        "language_info": {k: v for k, v in nb.metadata.get("language_info", {}).items() if k != "version"},
    })
    count = 0
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index}"
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            cell.outputs = merge_streams(cell.outputs)
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = count
    nbformat.validator.normalize(nb)
    nbformat.validate(nb)
    return nb


def build(source: Path, timeout: int) -> Path:
    """Execute one chapter source and write its notebook next to book/; return the notebook path."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=CurrentPythonKernels())
    client = NotebookClient(
        nb, km=manager, timeout=timeout, startup_timeout=120, record_timing=False,
        resources={"metadata": {"path": str(BOOK)}},  # cwd of the kernel
    )
    try:
        client.execute()
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    target = BOOK / f"{source.stem}.ipynb"
    target.write_text(nbformat.writes(clean(nb)) + "\n", encoding="utf-8")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="book/src/NN_name.py files (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default 900)")
    args = parser.parse_args()
    sources = args.sources or sorted((BOOK / "src").glob("*.py"))
    if not sources:
        print("no chapter sources found in book/src/", file=sys.stderr)
        return 1
    os.environ["TQDM_DISABLE"] = "1"  # the kernel inherits this (and MLXLLM_DATA_DIR, if set)
    for source in sources:
        if not source.is_file():
            print(f"{source}: no such file", file=sys.stderr)
            return 1
        start = time.perf_counter()
        print(f"executing {source} ...", flush=True)
        try:
            target = build(source.resolve(), args.timeout)
        except CellExecutionError as error:
            print(f"\nFAILED: a cell in {source} raised; notebook not written.\n{error}", file=sys.stderr)
            return 1
        print(f"  wrote {target.relative_to(ROOT)} ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
