"""Which parameters to generate: the ``targets=`` / ``exclude=`` grammar, written once.

The grammar, shared by every backend (and by ``exclude=``):

==========================  ===========================================================
``None``                    every floating-point parameter (``targets``) / nothing
                            (``exclude``)
``"regex"``                 a full match against a dotted parameter name, or against the
                            name of a module that (directly or indirectly) holds it
``["name", ...]``           each entry matches a parameter or module name exactly or as
                            a dotted suffix (``"query"`` matches
                            ``encoder.layer.0.attention.self.query``); an entry that
                            matches nothing is an error
``SomeModuleClass``         parameters held (directly or indirectly) by a module of
(or a tuple of classes)     that class
``fn(name, value) -> bool`` decides per parameter, given its canonical name and tensor
==========================  ===========================================================

A list may mix these forms (its strings are then exact-or-suffix names, a compiled
``re.Pattern`` is a regex); its result is the union. A tied tensor is selected when any
of its names is. Explicitly selecting a buffer or an integer parameter is an error.
Frozen parameters (``requires_grad=False``) are selected like any other: a generated
tensor is a function of the hypernetwork's own parameters, so "frozen" no longer applies
to it; exclude them with ``exclude=lambda name, p: not p.requires_grad``.

    >>> from hypernn.specs import ParamSpec
    >>> specs = [ParamSpec("fc1.weight", (4, 2), "float32", ((("", object), ("fc1", object)),)),
    ...          ParamSpec("fc1.bias", (4,), "float32", ((("", object), ("fc1", object)),))]
    >>> select(specs, targets=["weight"]).names
    ('fc1.weight',)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Sequence, Tuple, Union

from .errors import OptionTypeError, SelectionError
from .specs import ParamSpec

__all__ = ["Selection", "Selector", "check_selector", "select"]

Selector = Union[None, str, "re.Pattern[str]", type, Tuple[type, ...], Callable[[str, Any], bool], Sequence[Any]]

_MAX_LISTED = 40


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of a selection: the chosen tensors, in model order.

    ``str(selection)`` is a table of names, shapes and sizes (the dry run).
    """

    chosen: Tuple[ParamSpec, ...]
    model_name: str = "model"

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(spec.name for spec in self.chosen)

    @property
    def total_size(self) -> int:
        return sum(spec.size for spec in self.chosen)

    def without_values(self) -> "Selection":
        """A copy that holds no framework tensors (safe to keep on a module)."""
        return dataclasses.replace(self, chosen=tuple(s.without_value() for s in self.chosen))

    def __str__(self) -> str:
        rows = [(s.name + "".join(f" (= {a})" for a in s.aliases), str(s.shape), str(s.size)) for s in self.chosen]
        header = ("name", "shape", "size")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
        lines = [f"{len(rows)} tensors selected from {self.model_name}, {self.total_size} values"]
        for row in [header] + rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return "\n".join(lines)


# ---------------------------------------------------------------- normalising selectors


def _is_class_spec(obj: Any) -> bool:
    return isinstance(obj, type) or (isinstance(obj, tuple) and bool(obj) and all(isinstance(c, type) for c in obj))


def check_selector(selector: Any, argument: str) -> None:
    """Raise :class:`OptionTypeError` unless ``selector`` is spelled in the grammar."""
    if selector is None or callable(selector) or isinstance(selector, (str, re.Pattern)) or _is_class_spec(selector):
        if isinstance(selector, str):
            _compile(selector, argument)
        return
    if isinstance(selector, (list, tuple, set, frozenset)):
        for item in selector:
            if not (isinstance(item, (str, re.Pattern, type)) or callable(item)):
                raise OptionTypeError(
                    f"`{argument}` entries must be names (str), compiled regexes, module classes or "
                    f"callables (name, value) -> bool; got {item!r} of type {type(item).__name__}."
                )
        return
    raise OptionTypeError(
        f"`{argument}` must be None, a regex string, a list of names, a module class (or tuple of "
        f"classes) or a callable (name, value) -> bool; got {selector!r} of type {type(selector).__name__}."
    )


def _compile(pattern: str, argument: str) -> "re.Pattern[str]":
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SelectionError(f"`{argument}`={pattern!r} is not a valid regular expression: {err}.") from None


def _candidate_names(spec: ParamSpec) -> Iterable[str]:
    """Parameter names and the names of every (non-root) module above them."""
    for name, chain in zip(spec.names, spec.module_chains):
        yield name
        for module_name, _ in chain:
            if module_name:
                yield module_name


def _matches_suffix(entry: str, name: str) -> bool:
    return name == entry or name.endswith("." + entry)


def _owner_types(spec: ParamSpec) -> Iterable[type]:
    for chain in spec.module_chains:
        for _, module_type in chain:
            yield module_type


class _Matcher:
    """One selector turned into ``matches(spec) -> bool``; remembers list entries that hit."""

    def __init__(self, selector: Any, argument: str):
        self.argument = argument
        self.entries: Tuple[str, ...] = ()
        self.hit: set = set()
        if isinstance(selector, str):
            self.parts = [_compile(selector, argument)]
        elif isinstance(selector, (list, tuple, set, frozenset)) and not _is_class_spec(selector):
            self.parts = list(selector)  # a sequence: its strings are exact-or-suffix names
            self.entries = tuple(p for p in self.parts if isinstance(p, str))
        else:  # a compiled regex, a class or tuple of classes, a callable
            self.parts = [selector]

    def matches(self, spec: ParamSpec) -> bool:
        found = False
        for part in self.parts:
            if self._part_matches(part, spec):
                found = True
                if isinstance(part, str):
                    self.hit.add(part)
        return found

    def _part_matches(self, part: Any, spec: ParamSpec) -> bool:
        if isinstance(part, str):
            return any(_matches_suffix(part, n) for n in _candidate_names(spec))
        if isinstance(part, re.Pattern):
            return any(part.fullmatch(n) for n in _candidate_names(spec))
        if _is_class_spec(part):
            return any(issubclass(t, part) for t in _owner_types(spec))
        return bool(part(spec.name, spec.value))


# ---------------------------------------------------------------- the selection itself


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more; `hypernn.select(model)` lists them all)" if more > 0 else "")


def _available(specs: Sequence[ParamSpec]) -> str:
    params = sorted(n for s in specs if s.kind == "parameter" for n in s.names)
    modules = sorted({m for s in specs if s.kind == "parameter" for c in s.module_chains for m, _ in c if m})
    text = f"Available parameters: {_listing(params)}."
    if modules:
        text += f" Available modules: {_listing(modules)}."
    return text


def _check_entries(matcher: _Matcher, specs: Sequence[ParamSpec], model_name: str) -> None:
    missing = [e for e in matcher.entries if e not in matcher.hit]
    if not missing:
        return
    buffers = [e for e in missing if any(_matches_suffix(e, n) for s in specs if s.kind == "buffer" for n in s.names)]
    if buffers:
        raise SelectionError(
            f"`{matcher.argument}` names {_listing(buffers)}, which are buffers of {model_name}, not "
            f"parameters; buffers are never generated (they stay registered on the hypernetwork). "
            + _available(specs)
        )
    raise SelectionError(f"`{matcher.argument}` entries {_listing(missing)} match nothing in {model_name}. " + _available(specs))


def select(
    specs: Sequence[ParamSpec],
    *,
    targets: Selector = None,
    exclude: Selector = None,
    model_name: str = "model",
) -> Selection:
    """Choose the tensors to generate. See the module docstring for the grammar.

    Raises:
        SelectionError: nothing selected, an unknown list entry, a buffer named in a list,
            or a non-floating-point parameter matched by ``targets``.
    """
    check_selector(targets, "targets")
    check_selector(exclude, "exclude")
    params = [s for s in specs if s.kind == "parameter"]
    if targets is None:
        chosen = [s for s in params if s.is_floating]
    else:
        matcher = _Matcher(targets, "targets")
        chosen = [s for s in params if matcher.matches(s)]
        _check_entries(matcher, specs, model_name)
    if exclude is not None:
        dropper = _Matcher(exclude, "exclude")
        dropped = {s.name for s in params if dropper.matches(s)}
        _check_entries(dropper, specs, model_name)
        chosen = [s for s in chosen if s.name not in dropped]
    integer = [s.name + f" ({s.dtype})" for s in chosen if not s.is_floating]
    if integer:
        raise SelectionError(
            f"`targets` selects {_listing(integer)} of {model_name}, which are not floating-point and "
            f"cannot be generated; narrow `targets` or add them to `exclude`."
        )
    if not chosen:
        if not any(s.is_floating for s in params):
            raise SelectionError(f"{model_name} has no floating-point parameters to generate. " + _available(specs))
        raise SelectionError(
            f"`targets`={targets!r} with `exclude`={exclude!r} selects no parameters of {model_name}. "
            + _available(specs)
        )
    return Selection(chosen=tuple(chosen), model_name=model_name)
