"""Every ```python block of README.md runs, in order, in one namespace (```py blocks are
recipes that need several processes: shown, not run)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["y"].shape == (4, 10)
    assert isinstance(namespace["policy"], namespace["Policy"])
    assert namespace["per_sample"].shape == namespace["by_task"].shape == (5, 10)
