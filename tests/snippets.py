"""Code blocks of Markdown files, for the tests that run them (README.md, the docs pages).

A fenced block's language is the first word after the fence. ```` ```python ```` blocks run;
```` ```py ```` blocks are shown only (recipes that need several processes, a GPU or a
launcher). Fences may be indented (inside content tabs or admonitions); the indentation
is removed. A ```` ```text ```` block right after a ```` ```python ```` block (nothing but
blank lines between them) shows that block's output: it must appear in what the block
prints (whitespace compared loosely, so long lines may be wrapped, and the output shown
may be an excerpt).

    >>> blocks = code_blocks("text\\n\\n```python\\nx = 1\\n```\\n\\n=== \\"Tab\\"\\n\\n    ```py\\n    y = 2\\n    ```\\n")
    >>> [(b.language, b.code, b.line) for b in blocks]
    [('python', 'x = 1\\n', 4), ('py', 'y = 2\\n', 10)]
    >>> blocks[0].fence_lines, blocks[1].fence_lines
    ((3, 5), (9, 11))
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pathlib
import re
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block: its language, its code (indentation removed), the 1-based
    line number of its first code line, and those of its opening and closing fences."""

    language: str
    code: str
    line: int
    fence_lines: Tuple[int, int]


def code_blocks(text: str) -> List[Block]:
    """Every fenced code block of the Markdown ``text``, in order.

    Raises:
        ValueError: a fence that is never closed (the rest of the page would be code).
    """
    lines = text.split("\n")
    blocks, index = [], 0
    while index < len(lines):
        opening = OPENING.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((i for i in range(index + 1, len(lines)) if closing.match(lines[i])), None)
        if end is None:
            raise ValueError(f"the code fence opened on line {index + 1} is never closed")
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[index + 1 : end]]
        info = opening["info"].split()
        code = "".join(line + "\n" for line in body)
        blocks.append(Block(info[0] if info else "", code, index + 2, (index + 1, end + 1)))
        index = end + 1
    return blocks


def python_blocks(path: pathlib.Path) -> List[Block]:
    """The ```` ```python ```` blocks of the Markdown file at ``path`` (those that run)."""
    return [block for block in code_blocks(path.read_text()) if block.language == "python"]


def _shown_outputs(text: str) -> Dict[int, Block]:
    """``{index of a python block: the text block right after it}``."""
    blocks, lines = code_blocks(text), text.split("\n")
    shown = {}
    for index, (block, following) in enumerate(zip(blocks, blocks[1:])):
        between = lines[block.fence_lines[1] : following.fence_lines[0] - 1]
        if block.language == "python" and following.language == "text" and not "".join(between).strip():
            shown[index] = following
    return shown


def _loose(text: str) -> str:
    return " ".join(text.split())


def run_python_blocks(path: pathlib.Path, namespace: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the ```` ```python ```` blocks of ``path`` in order, in one namespace, and return it.

    Each block is compiled with the file's name and its own line numbers, so a traceback
    points at the line of the Markdown file that failed. Output shown in a ```` ```text ````
    block right after a block must appear in what that block prints.

    Raises:
        AssertionError: a block's shown output is not what it printed.
    """
    # a real module, registered while the blocks run: dataclasses (flax modules) and
    # pickle look classes up by their module's name
    module = types.ModuleType("snippets_" + re.sub(r"\W", "_", path.stem))
    if namespace is not None:
        module.__dict__.update(namespace)
    text = path.read_text()
    shown = _shown_outputs(text)
    sys.modules[module.__name__] = module
    try:
        for index, block in enumerate(code_blocks(text)):
            if block.language == "python":
                _run(block, path, module.__dict__, shown.get(index))
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def _run(block: Block, path: pathlib.Path, namespace: Dict[str, Any], shown: Optional[Block]) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile("\n" * (block.line - 1) + block.code, str(path), "exec"), namespace)  # noqa: S102
    if shown is not None and _loose(shown.code) not in _loose(printed.getvalue()):
        raise AssertionError(
            f"{path}:{shown.line}: the output shown is not what the block above printed.\n"
            f"shown:\n{shown.code}\nprinted:\n{printed.getvalue()}"
        )
