"""The package's style rules (issue #32): lines of at most 100 characters, and one numbering.

The code is formatted by hand (no formatter runs over it), so these tests are what keeps the
lines short. Module docstrings name the book's chapters ("Chapter 3"), never a "Part 3a".
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = sorted((ROOT / "mlxllm").rglob("*.py"))
MAX_LINE = 100  # characters, not bytes: "→" counts as one
SHOWN = 20  # offenders listed in a failure message
PART = re.compile(r"\bPart \d")


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _report(offenders: list[str], what: str) -> str:
    more = f" (the first {SHOWN})" if len(offenders) > SHOWN else ""
    return f"{len(offenders)} {what}{more}:\n" + "\n".join(offenders[:SHOWN])


def test_there_are_sources():
    assert len(SOURCES) >= 20


def test_lines_fit_in_100_characters():
    long = [f"{_name(path)}:{number}:{len(line)}" for path in SOURCES
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > MAX_LINE]
    if long:
        pytest.fail(_report(long, f"lines over {MAX_LINE} characters (file:line:length)"),
                    pytrace=False)


def test_module_docstrings_number_chapters_not_parts():
    parts = []
    for path in SOURCES:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        parts += [f"{_name(path)}: {line.strip()}" for line in docstring.splitlines()
                  if PART.search(line)]
    if parts:
        pytest.fail(_report(parts, 'module docstring lines that say "Part N" (say "Chapter N")'),
                    pytrace=False)
