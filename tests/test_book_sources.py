"""The chapter sources fit the rendered page and hide nbval's markers (Chapter sources: book/src/*.py)."""

from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).parent.parent / "book" / "src").glob("*.py"))
MAX_LINE = 88  # characters: wider code lines are cut off in the book's rendered column


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_code_lines_fit_the_rendered_column(source):
    long = [f"{source.name}:{n}: {len(line)} characters" for n, line in
            enumerate(source.read_text(encoding="utf-8").splitlines(), 1) if len(line) > MAX_LINE]
    assert not long, f"lines over {MAX_LINE} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_ignored_outputs_use_the_cell_tag_not_a_visible_comment(source):
    text = source.read_text(encoding="utf-8")
    assert "NBVAL_IGNORE_OUTPUT" not in text, 'use the cell tag: # %% tags=["nbval-ignore-output"]'


def test_there_are_chapter_sources():
    assert len(SOURCES) >= 9
