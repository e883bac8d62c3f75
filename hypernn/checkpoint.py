"""Framework-free checks that a checkpoint fits a hypernetwork, before anything loads.

Backends pass ``{name: shape}`` of what they hold and of what is offered; a mismatch
raises :class:`~hypernn.errors.CheckpointMismatchError` listing every differing name.

    >>> check_checkpoint({"a": (2,), "b": (3,)}, {"a": (2,), "b": (4,)}, owner="MLP hypernetwork")
    Traceback (most recent call last):
    ...
    hypernn.errors.CheckpointMismatchError: the checkpoint does not fit this MLP hypernetwork (nothing was loaded): shape mismatch: 'b' is (4,) in the checkpoint, (3,) here. A checkpoint fits only a hypernetwork of the same model built with the same selection and sizes.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Tuple

from .errors import CheckpointMismatchError

__all__ = ["check_checkpoint", "strip_wrapper_prefixes"]

_MAX_LISTED = 20

#: prefixes that wrappers add to state_dict keys: torch.compile and DistributedDataParallel
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def check_checkpoint(
    expected: Mapping[str, Tuple[int, ...]],
    given: Mapping[str, Tuple[int, ...]],
    *,
    owner: str = "hypernetwork",
    strict: bool = True,
) -> None:
    """Raise unless ``given`` has the names (``strict``) and shapes of ``expected``."""
    missing = sorted(set(expected) - set(given)) if strict else []
    unexpected = sorted(set(given) - set(expected)) if strict else []
    wrong = sorted(n for n in set(expected) & set(given) if tuple(expected[n]) != tuple(given[n]))
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"not in this hypernetwork: {_listing(unexpected)}")
    if wrong:
        problems.append("shape mismatch: " + ", ".join(f"{n!r} is {tuple(given[n])} in the checkpoint, {tuple(expected[n])} here" for n in wrong[:_MAX_LISTED]))
    if problems:
        raise CheckpointMismatchError(
            f"the checkpoint does not fit this {owner} (nothing was loaded): {'; '.join(problems)}. A checkpoint fits "
            f"only a hypernetwork of the same model built with the same selection and sizes."
        )


def strip_wrapper_prefixes(names: Sequence[str], expected: Sequence[str]) -> str:
    """The prefix (e.g. ``"module._orig_mod."``) that wrappers put on all of ``names``.

    Empty when the names already match ``expected`` or carry no common wrapper prefix.
    """
    expected_set, prefix = set(expected), ""
    remaining = list(names)
    while remaining and not set(remaining) & expected_set:
        step = next((p for p in WRAPPER_PREFIXES if all(n.startswith(p) for n in remaining)), None)
        if step is None:
            return ""
        prefix += step
        remaining = [n[len(step):] for n in remaining]
    return prefix
