"""Draw docs/images/layouts.svg: the two chunk layouts of one small model, from the planner.

The picture is computed by :func:`hypernn.plan_layout` itself, so it shows what the
library does, not what someone remembered it does; ``tests/docs/test_docs_build.py``
checks that the committed file is what this script writes. Run it after changing the
layout code::

    python docs/scripts/draw_layouts.py

The model is ``nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))``: 26 values in
four tensors. Each panel is the generator's output, one row per chunk embedding (row
``i`` is generated from embedding ``i``), each cell one generated value, coloured by the
tensor it becomes.
"""

from __future__ import annotations

import pathlib
import sys
from typing import List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hypernn import Layout, plan_layout  # noqa: E402

OUTPUT = ROOT / "docs" / "images" / "layouts.svg"
TENSORS = (("0.weight", (4, 3)), ("0.bias", (4,)), ("2.weight", (2, 4)), ("2.bias", (2,)))
#: Okabe-Ito colours, distinguishable with the common colour-vision deficiencies
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")
UNUSED = "#d9d9d9"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CELL, GAP = 26, 3


def owners(layout: Layout) -> List[Optional[int]]:
    """For every generated value: the index of the tensor it becomes, or ``None`` (unused)."""
    owner: List[Optional[int]] = [None] * layout.generated_size
    for index, slot in enumerate(layout.slots):
        owner[slot.offset : slot.offset + slot.size] = [index] * slot.size
    return owner


def panel(layout: Layout, x0: int, y0: int, title: str, note: str) -> Tuple[List[str], int]:
    """SVG elements of one layout's grid (rows: chunks) and the panel's height."""
    parts = [f'<text x="{x0}" y="{y0}" font-size="15" font-weight="600">{title}</text>',
             f'<text x="{x0}" y="{y0 + 19}" font-size="12" fill="#555">{note}</text>']  # fmt: skip
    top, left = y0 + 34, x0 + 58
    owner = owners(layout)
    for row in range(layout.num_chunks):
        y = top + row * (CELL + GAP)
        parts.append(f'<text x="{x0}" y="{y + CELL * 0.68:.0f}" font-size="12" fill="#333">chunk {row}</text>')
        for column in range(layout.chunk_dim):
            tensor = owner[row * layout.chunk_dim + column]
            fill = UNUSED if tensor is None else COLOURS[tensor]
            x = left + column * (CELL + GAP)
            parts.append(f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" rx="3" fill="{fill}"/>')
            if tensor is None:
                parts.append(f'<path d="M{x + 6} {y + CELL - 6} L{x + CELL - 6} {y + 6}" stroke="#999" stroke-width="2"/>')
    return parts, 34 + layout.num_chunks * (CELL + GAP)


def legend(x0: int, y0: int) -> List[str]:
    """One swatch per tensor (name, shape, size) and one for unused values."""
    parts = []
    entries = [(name, f"{name} {shape}", COLOURS[i]) for i, (name, shape) in enumerate(TENSORS)]
    entries.append(("unused", "generated, unused", UNUSED))
    x = x0
    for _, label, colour in entries:
        parts.append(f'<rect x="{x}" y="{y0}" width="14" height="14" rx="2" fill="{colour}"/>')
        parts.append(f'<text x="{x + 20}" y="{y0 + 12}" font-size="12" fill="#333">{label}</text>')
        x += 20 + 7 * len(label) + 22
    return parts


def draw() -> str:
    """The SVG document, as text."""
    shared = plan_layout(TENSORS, kind="global", num_embeddings=4)
    separate = plan_layout(TENSORS, kind="per_tensor", chunk_dim=4)
    left, top = 20, 30
    a, height_a = panel(shared, left, top, 'layout="global", num_embeddings=4',
                        f"{shared.num_chunks} chunks of {shared.chunk_dim}; chunks may span two tensors")  # fmt: skip
    right = left + 58 + shared.chunk_dim * (CELL + GAP) + 70
    b, height_b = panel(separate, right, top, 'layout="per_tensor", chunk_dim=4',
                        f"{separate.num_chunks} chunks of {separate.chunk_dim}; every chunk inside one tensor")  # fmt: skip
    width = right + 58 + separate.chunk_dim * (CELL + GAP) + 170
    height = top + max(height_a, height_b) + 50
    body = a + b + legend(left, height - 32)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="{FONT}" role="img" aria-labelledby="title">',
            "<title id=\"title\">Chunk layouts of Sequential(Linear(3, 4), ReLU(), Linear(4, 2)): global and per_tensor</title>",
            f'<rect width="{width}" height="{height}" rx="8" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(draw())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
