"""Every ```python block of every page under docs/ runs, so the site cannot drift from the code.

Blocks of one page run in order in one namespace (a page reads top to bottom); each page
gets a fresh one. ```py blocks are shown only: recipes that need several processes or a
launcher (torchrun). A traceback names the page and its line.
"""

import pathlib
import tempfile

import pytest

from snippets import code_blocks, run_python_blocks

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: fence languages the pages may use; anything else is likely a typo that would hide a
#: block from this test (```pyhton)
LANGUAGES = {"python", "py", "bash", "text"}
#: the widest code line that fits the page's column without scrolling (1280 px window)
MAX_CODE_LINE = 79


def test_docs_pages_exist():
    assert len(PAGES) >= 10, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(DOCS).as_posix())
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = code_blocks(page.read_text())
    assert {block.language for block in blocks} <= LANGUAGES, f"{page}: unknown fence languages"
    assert sum(block.language == "python" for block in blocks) == page.read_text().count("```python")
    long = [(block.line + i, len(line)) for block in blocks for i, line in enumerate(block.code.splitlines())
            if len(line) > MAX_CODE_LINE]
    assert not long, f"{page}: code lines wider than {MAX_CODE_LINE} characters (line, width): {long}"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # files the pages write land here
    run_python_blocks(page)
