"""Checked restores of flax hypernetwork checkpoints (linen variable dicts and NNX state).

A checkpoint of another model, or of the same model hypernetized with another
selection or sizes, has other names or shapes: :func:`restore_variables` compares them
first and raises :class:`~hypernn.errors.CheckpointMismatchError` listing every
difference, before anything is restored.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from flax import serialization
    >>> from hypernn import hypernetize
    >>> x = jnp.ones((1, 5))
    >>> hnet = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=2, example_inputs=(x,))
    >>> saved = serialization.msgpack_restore(serialization.to_bytes(hnet.init(jax.random.key(0), x)))
    >>> restored = restore_variables(hnet.init(jax.random.key(1), x), saved)
    >>> embedding = restored["params"]["embedding_module"]["embedding"]
    >>> bool(jnp.array_equal(embedding, saved["params"]["embedding_module"]["embedding"]))
    True
    >>> other = hypernetize(nn.Dense(3), embedding_dim=4, num_embeddings=3, example_inputs=(x,))
    >>> restore_variables(other.init(jax.random.key(1), x), saved)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hypernn.errors.CheckpointMismatchError: the checkpoint does not fit this linen hypernetwork (nothing was loaded): shape mismatch: 'params.embedding_module.embedding' is (2, 4) in the checkpoint, (3, 4) here, ...
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Set, Tuple

import numpy as np

from ..checkpoint import check_checkpoint
from ..errors import OptionTypeError
from .jaxutil import dotted

__all__ = ["restore_variables"]


def _flat(tree: Mapping, prefix: Tuple[Any, ...] = ()) -> Dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}``."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, prefix + (key,)))
        else:
            flat[dotted(prefix + (key,))] = value
    return flat


def _shape(leaf: Any) -> Tuple[int, ...]:
    shape = getattr(leaf, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(leaf))


def _shapes(flat: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    return {name: _shape(leaf) for name, leaf in flat.items()}


def _check_mapping(checkpoint: Any) -> None:
    if not isinstance(checkpoint, Mapping):
        raise OptionTypeError(
            f"`checkpoint` must be a nested dict of arrays (from flax.serialization.msgpack_restore, "
            f"to_state_dict or an orbax restore) or an nnx.State; got {type(checkpoint).__name__}."
        )


def _restore_linen(template: Mapping, checkpoint: Mapping) -> Any:
    from flax import serialization

    expected = _shapes(_flat(template))
    check_checkpoint(expected, _shapes(_flat(checkpoint)), owner="linen hypernetwork")
    return serialization.from_state_dict(template, checkpoint)


def _unwrap_values(given: Dict[str, Any], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """``"a.kernel.value"`` -> ``"a.kernel"``: an ``nnx.State`` restored by orbax without a target."""
    renamed = {}
    for name, leaf in given.items():
        bare = name[: -len(".value")]
        keep = not name.endswith(".value") or name in expected or bare not in expected
        renamed[name if keep else bare] = leaf
    return renamed


def _is_saved_slot(name: str, leaf: Any, slots: Set[str], expected: Mapping[str, Any]) -> bool:
    """A generated slot's placeholder (a scalar, or an empty array) where this module has a
    slot or a non-scalar variable. Dropped, so the names of a checkpoint made with another
    selection read as missing, and slots may be saved or left out."""
    shape = _shape(leaf)
    if shape != () and int(np.prod(shape)) != 0:
        return False
    return name in slots or (name in expected and _shape(expected[name]) not in ((), shape))


def _restore_nnx(state: Any, checkpoint: Any, owner: str) -> Any:
    from flax import nnx

    from .nnx.introspect import GeneratedSlot

    if isinstance(checkpoint, nnx.State):
        checkpoint = nnx.to_pure_dict(checkpoint)
    _check_mapping(checkpoint)
    flat_state = list(nnx.to_flat_state(state))
    slots = {dotted(path) for path, variable in flat_state if isinstance(variable, GeneratedSlot)}
    variables = {dotted(path): variable for path, variable in flat_state if dotted(path) not in slots}
    expected = {name: variable.get_value() for name, variable in variables.items()}
    given = _unwrap_values(_flat(checkpoint), expected)
    given = {name: leaf for name, leaf in given.items() if not _is_saved_slot(name, leaf, slots, expected)}
    check_checkpoint(_shapes(expected), _shapes(given), owner=owner)
    return nnx.from_flat_state(
        [(path, variable if dotted(path) in slots else variable.replace(given[dotted(path)])) for path, variable in flat_state]
    )


def restore_variables(template: Any, checkpoint: Any) -> Any:
    """Restore ``checkpoint`` into the structure of ``template``, after checking it fits.

    Args:
        template: a linen hypernetwork's variable dict (from ``init``, or abstract from
            ``jax.eval_shape``); or an NNX hypernetwork's ``nnx.State``; or the NNX
            hypernetwork (module) itself.
        checkpoint: a nested dict of arrays, as ``flax.serialization.msgpack_restore``,
            ``to_state_dict``/``nnx.to_pure_dict`` or an orbax restore give it; for NNX
            also an ``nnx.State``. NNX's empty generated slots may be left out of it.

    Returns:
        linen: a new variable dict (``flax.serialization.from_state_dict``); NNX state:
        a new ``nnx.State``; NNX module: the module, updated in place (``nnx.update``).

    Raises:
        CheckpointMismatchError: names or shapes differ (other model, selection or
            sizes); it lists them all and nothing is restored or changed.
        OptionTypeError: ``template`` or ``checkpoint`` is of none of these kinds.
    """
    from flax import nnx

    if isinstance(template, nnx.Module):
        selection = getattr(template, "selection", None)
        owner = f"{selection.model_name} hypernetwork" if selection is not None else type(template).__name__
        nnx.update(template, _restore_nnx(nnx.state(template), checkpoint, owner))
        return template
    if isinstance(template, nnx.State):
        return _restore_nnx(template, checkpoint, "NNX hypernetwork")
    if isinstance(template, Mapping):
        _check_mapping(checkpoint)
        return _restore_linen(template, checkpoint)
    raise OptionTypeError(
        f"`template` must be a linen hypernetwork's variable dict, an nnx.State or an NNX hypernetwork; "
        f"got {type(template).__name__}."
    )
