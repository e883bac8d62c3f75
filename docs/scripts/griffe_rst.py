"""A griffe extension: hypernn's docstrings use a few reST habits; render them as Markdown.

The library's docstrings are read in the terminal (``help()``) and by doctest as much as on
the site, so they keep Sphinx's cross-reference roles and ``::`` literal markers. For the
site this extension rewrites, before mkdocstrings parses them:

* ``:func:`hypernn.select``` -> a code span linking to that object when the site documents
  it (an *optional* autoref: no warning, and plain code, when it does not);
* ``:class:`~hypernn.layout.Layout``` -> the same, shown as its last component (``Layout``);
* roles on undotted names (``:meth:`generate_params```) -> the same, the name taken
  relative to the docstring's module or class;
* a paragraph ending in ``::`` (reST's "a literal block follows") -> ending in ``:``;
* a reST simple table (rows between ``====  ====`` borders) -> a bulleted list, one item
  per row, ``first column: other columns``. A row starts where the first column opens
  with markup (a code span or a role), as in every table of hypernn's docstrings; other
  lines continue the row above.

    >>> rewrite(":func:`~hypernn.conditioning.film` or :attr:`layout`")
    '<autoref identifier="hypernn.conditioning.film" optional><code>film</code></autoref> or `layout`'
    >>> rewrite(":attr:`layout`", scope="hypernn.Net")
    '<autoref identifier="hypernn.Net.layout" optional><code>layout</code></autoref>'
    >>> rewrite("Example::")
    'Example:'
    >>> table = ["=======  =====", "``a``    one", "         more", "``b``    two", "=======  ====="]
    >>> print(rewrite("\\n".join(table)))
    - ``a``: one more
    - ``b``: two
"""

from __future__ import annotations

import html
import re
from typing import Any, List, Tuple

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$|\s+::$", flags=re.M)
TABLE_BORDER = re.compile(r"^=+( +=+)+ *$")
#: only names of this package can be documented on the site
LINKABLE = "hypernn."


def _role(match: re.Match, scope: str) -> str:
    short, target = match.group(1) == "~", match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    if scope and "." not in target:
        target = f"{scope}.{target}"  # a name relative to the docstring's module or class
    if not target.startswith(LINKABLE):
        return f"`{shown}`"
    return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(shown)}</code></autoref>'


def _columns(border: str) -> List[Tuple[int, int]]:
    """``(start, end)`` of every column of a table border: a column owns the gap after it
    (text may overhang into it), the last one runs to the line's end."""
    starts = [match.start() for match in re.finditer(r"=+", border)]
    return list(zip(starts, starts[1:] + [10**6]))


def _table(lines: List[str]) -> List[str]:
    """A simple table's lines (borders included) as Markdown list items."""
    columns = _columns(lines[0])
    rows: List[List[str]] = []
    for line in lines[1:]:
        if TABLE_BORDER.match(line) or not line.strip():
            continue
        cells = [line[start:end].strip() for start, end in columns]
        if rows and not cells[0].startswith(("``", ":")):
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return [f"- {cells[0]}: {' '.join(c for c in cells[1:] if c)}" for cells in rows]


def _tables(text: str) -> str:
    """Every headerless simple table of ``text`` (a border, rows, a border) as a list."""
    lines, out, index = text.split("\n"), [], 0
    borders = [i for i, line in enumerate(lines) if TABLE_BORDER.match(line)]
    for start, end in zip(borders[::2], borders[1::2]):
        out += lines[index:start] + _table(lines[start : end + 1])
        index = end + 1
    return "\n".join(out + lines[index:])


def rewrite(text: str, scope: str = "") -> str:
    """The docstring ``text`` with tables, roles and literal markers turned into Markdown;
    ``scope`` (a dotted path) resolves the roles' undotted names."""
    text = ROLE.sub(lambda match: _role(match, scope), _tables(text))
    return LITERAL_MARKER.sub(lambda m: ":" if m.group(0) == "::" else "", text)


class ReSTMarkup(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`rewrite` (its roles resolved
    relative to the object's module or class)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            scope = obj.path if obj.is_module or obj.is_class else obj.parent.path
            obj.docstring.value = rewrite(obj.docstring.value, scope)
