"""A griffe extension: hypernn's docstrings use a few reST habits; render them as Markdown.

The library's docstrings are read in the terminal (``help()``) and by doctest as much as on
the site, so they keep Sphinx's cross-reference roles and ``::`` literal markers. For the
site this extension rewrites, before mkdocstrings parses them:

* ``:func:`hypernn.select``` -> a code span linking to that object when the site documents
  it (an *optional* autoref: no warning, and plain code, when it does not);
* ``:class:`~hypernn.layout.Layout``` -> the same, shown as its last component (``Layout``);
* roles on relative names (``:meth:`generate_params```) -> a plain code span;
* a paragraph ending in ``::`` (reST's "a literal block follows") -> ending in ``:``.

    >>> rewrite(":func:`~hypernn.conditioning.film` or :attr:`layout`")
    '<autoref identifier="hypernn.conditioning.film" optional><code>film</code></autoref> or `layout`'
    >>> rewrite("Example::")
    'Example:'
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$|\s+::$", flags=re.M)
#: only names of this package can be documented on the site
LINKABLE = "hypernn."


def _role(match: re.Match) -> str:
    short, target = match.group(1) == "~", match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    if not target.startswith(LINKABLE):
        return f"`{shown}`"
    return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(shown)}</code></autoref>'


def rewrite(text: str) -> str:
    """The docstring ``text`` with roles and literal markers turned into Markdown."""
    return LITERAL_MARKER.sub(lambda m: ":" if m.group(0) == "::" else "", ROLE.sub(_role, text))


class ReSTRoles(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`rewrite`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
