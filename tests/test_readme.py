"""Every ```python block of README.md runs, in order, in one namespace (```py blocks are
recipes that need several processes: shown, not run)."""

import pathlib

from snippets import python_blocks, run_python_blocks

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    assert len(python_blocks(README)) >= 6
    namespace = run_python_blocks(README)
    assert namespace["y"].shape == (4, 10)
    assert isinstance(namespace["policy"], namespace["Policy"])
    assert namespace["per_sample"].shape == namespace["by_task"].shape == (5, 10)
