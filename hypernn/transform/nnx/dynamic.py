"""Dynamic NNX hypernetworks: weights generated from a condition, per sample, batched.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    >>> hnet = DynamicHypernetizedNNX(model, embedding_dim=3, num_embeddings=2, condition_dim=5, rngs=nnx.Rngs(1))
    >>> x, c = jnp.ones((6, 4)), jnp.ones((6, 5))
    >>> hnet(x, condition=c).shape          # weight set i for sample i
    (6, 2)
    >>> hnet(x, condition=c[0]).shape       # one weight set for the whole batch
    (6, 2)
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from ...calling import (
    call_arguments,
    call_hypernetwork,
    check_condition_keyword,
    check_conditioning_kwargs,
    check_reserved,
    route_condition,
)
from ...errors import ConditionError, ConfigurationError, UnsupportedModelError
from ...options import HypernetizeOptions
from ..jaxconditions import check_condition
from ..jaxconv import patches_conv
from ..jaxpersample import drop_sample_batch_axis, map_samples, with_sample_axis
from ..jaxutil import check_chunks, check_generated_params
from . import conditioning
from .introspect import GeneratedSlot
from .lowrank import factor_linears, split_generated
from ...diagnostics import HypernetworkSummary
from .module import _MERGE_COPY, HypernetizedNNX

__all__ = ["DynamicHypernetizedNNX"]


class DynamicHypernetizedNNX(HypernetizedNNX):
    """An NNX hypernetwork whose generated weights depend on a condition, per sample.

    ``hnet(x, condition=c)``: ``c`` of shape ``(B, C)`` generates weight set ``i`` for sample
    ``i`` (output ``i`` equals the model run with weight set ``i`` on ``x[i:i+1]``); ``c`` of
    shape ``(C,)`` generates one weight set for the whole batch. With ``num_conditions=T``,
    ``c`` holds integer ids (shape ``(B,)`` or ``()``).

    Per-sample weights run under ``jax.vmap`` (rules: :mod:`hypernn.transform.jaxpersample`):
    an independent dropout mask per sample (from the model's own ``Rngs`` or an ``nnx.Rngs``
    passed with the call, split per sample), and batch norm as conditional batch norm
    (whole-batch statistics, running averages updated once, per-sample scale and shift).

    Args: those of :class:`HypernetizedNNX`, plus ``condition_dim``, ``num_conditions``,
    ``condition_factory`` (NNX factories take ``rngs=``) and ``condition_keyword`` (see
    :func:`hypernn.hypernetize`).
    """

    def __init__(
        self,
        model: nnx.Module,
        *,
        condition_dim: Optional[int] = None,
        num_conditions: Optional[int] = None,
        condition_factory: Any = None,
        condition_keyword: bool = True,
        rngs: Optional[nnx.Rngs] = None,
        **options: Any,
    ):
        built = HypernetizeOptions(condition_dim=condition_dim, num_conditions=num_conditions,
                                   condition_factory=condition_factory, condition_keyword=condition_keyword,
                                   **options)  # fmt: skip
        if not built.dynamic:
            raise ConfigurationError("a dynamic hypernetwork needs `condition_dim=` or `num_conditions=`.")
        self.condition_keyword = condition_keyword
        self._build(model, built, rngs)

    # ------------------------------------------------------------ construction

    def _check_call_arguments(self, model: nnx.Module, options: HypernetizeOptions) -> None:
        owner = f"{type(model).__name__}.__call__"
        check_condition_keyword(model.__call__, owner, options.condition_keyword)
        check_reserved(model.__call__, owner)

    def _make_extra_modules(self, options: HypernetizeOptions, rngs: nnx.Rngs) -> Dict[str, nnx.Module]:
        self.condition_dim = options.condition_dim or options.embedding_dim
        self.num_conditions = options.num_conditions
        extra = {}
        if self.num_conditions is not None:
            extra["condition_embedding"] = nnx.Embed(self.num_conditions, self.condition_dim, rngs=rngs)
        factory = conditioning.resolve(options.condition_factory)
        module = factory(self.condition_dim, self.num_embeddings, self.embedding_dim, rngs=rngs)
        extra["condition_module"] = self._checked_module(module, "condition_factory")
        self.generator_input_dim = getattr(module, "output_dim", self.embedding_dim)
        return extra

    _probe_batch = (1,)

    def _probe_chunks(self, embedding_module: nnx.Module, weight_generator: nnx.Module, extra: Dict[str, nnx.Module]) -> Any:
        vectors = jnp.zeros((1, self.condition_dim))
        if self.num_conditions is not None:
            vectors = extra["condition_embedding"](jnp.zeros((1,), jnp.int32))
        embedding, _ = extra["condition_module"](embedding_module(jnp.arange(self.num_embeddings)), vectors)
        return weight_generator(embedding)

    # ------------------------------------------------------------ generating

    def generate_params(self, condition: Any = None, **kwargs: Any) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """Generate ``(flat, aux)``: ``flat`` is ``(generated_size,)`` for one condition or
        ``(B, generated_size)`` for a batch; ``aux`` holds the conditioned ``"embedding"`` and
        whatever the conditioning module adds (e.g. ``"hidden_state"``)."""
        accepted = set(call_arguments(self.condition_module.__call__)) - {"embedding", "condition"}
        check_conditioning_kwargs(accepted, type(self.condition_module).__name__, kwargs)
        vectors = check_condition(condition, condition_dim=self.condition_dim, num_conditions=self.num_conditions)
        if self.num_conditions is not None:
            vectors = self.condition_embedding(vectors)
        embedding, aux = self.condition_module(self.embedding_module(jnp.arange(self.num_embeddings)), vectors, **kwargs)
        chunks = self.weight_generator(embedding)
        lead = tuple(vectors.shape[:-1])
        check_chunks(chunks, self.num_embeddings, self.weight_chunk_dim, self.generator_input_dim, lead)
        return self.start_map(chunks.reshape(*lead, -1)), {"embedding": embedding, **aux}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Like the static check, but a ``(B, n)`` batch of vectors is valid too."""
        check_generated_params(generated_params, self.layout, batched=True)

    def _one_weight_set(self, generate_params_kwargs: Dict[str, Any], what: str) -> jax.Array:
        flat, _ = self.generate_params(**generate_params_kwargs)
        if flat.ndim != 1:
            raise ConditionError(f"{what} needs one condition (shape (C,) or one id), not a batch.")
        return flat

    def generated_state(self, **generate_params_kwargs: Any) -> nnx.State:
        """The original model's ``nnx.Param`` state for one condition."""
        return nnx.state(self._merged(self._one_weight_set(generate_params_kwargs, "generated_state"), nnx.Param), nnx.Param)

    def materialize(self, **generate_params_kwargs: Any) -> nnx.Module:
        """A plain copy of the model with the weights of one condition baked in."""
        return self._merged(self._one_weight_set(generate_params_kwargs, "materialize"), nnx.Param)

    def summary(self, **generate_params_kwargs: Any) -> HypernetworkSummary:
        """Like the static summary, for one condition (default: the zero condition, or id 0)."""
        note = ""
        if generate_params_kwargs.get("condition") is None:
            zero = jnp.zeros((), jnp.int32) if self.num_conditions is not None else jnp.zeros((self.condition_dim,))
            generate_params_kwargs["condition"] = zero
            note = ", at condition id 0" if self.num_conditions is not None else ", at the zero condition"
        return self._summary(self._one_weight_set(generate_params_kwargs, "summary"), note)

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the model with one weight set (a vector) or one per sample (``(B, n)``)."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        if generated_params.ndim == 1:
            return super().target_forward(*args, generated_params=generated_params,
                                          assert_parameter_shapes=False, **kwargs)  # fmt: skip
        batch = generated_params.shape[0]
        graphdef, keys, rest = nnx.split(self.target_network, nnx.RngKey, ...)
        batched_keys = jax.tree_util.tree_map(lambda key: jax.random.split(key, batch), keys)
        slot_paths = self._slot_paths
        conv_paths = frozenset(path[:-1] for path, _ in slot_paths if path[-1] == "kernel")

        def run(sample: Any, *sample_args: Any, shared: nnx.State, **sample_kwargs: Any) -> Any:
            (tensors, factors), sample_keys, (rngs_args, rngs_kwargs) = sample
            sample_args = tuple(rngs_args.get(i, value) for i, value in enumerate(sample_args))
            sample_kwargs = {**sample_kwargs, **rngs_kwargs}
            flat = dict(nnx.to_flat_state(shared))
            for path, name in slot_paths:  # a factored kernel's slot keeps W0
                flat[path] = GeneratedSlot(tensors[name] if name in tensors else flat[path][...])
            model = nnx.merge(graphdef, sample_keys, nnx.from_flat_state(flat), **_MERGE_COPY)
            _per_sample_layers(model, conv_paths)
            factor_linears(model, slot_paths, factors)
            output = model(*sample_args, **sample_kwargs)
            return output, nnx.state(model, nnx.Not(nnx.Any(nnx.Param, GeneratedSlot, nnx.RngKey)))

        # an nnx.Rngs passed with the call: one stream per sample (advancing the caller's),
        # mapped with the weights rather than as an argument (whose samples keep an axis)
        call_rngs = ({i: value.split(batch) for i, value in enumerate(args) if isinstance(value, nnx.Rngs)},
                     {name: value.split(batch) for name, value in kwargs.items() if isinstance(value, nnx.Rngs)})
        args = tuple(None if i in call_rngs[0] else value for i, value in enumerate(args))
        kwargs = {name: value for name, value in kwargs.items() if name not in call_rngs[1]}
        per_sample = (split_generated(self, generated_params), batched_keys, call_rngs)
        output, updated = map_samples(run, per_sample, args, kwargs, batch=batch, shared=rest)
        nnx.update(self.target_network, _merge_sample_state(updated))
        return output

    def __call__(
        self,
        *args: Any,
        condition: Any = None,
        generated_params: Optional[jax.Array] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """``hnet(x, condition=c)``; the other keywords as for a static hypernetwork."""
        generate_kwargs = route_condition(condition, generate_params_kwargs, kwargs, self.condition_keyword)
        return call_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                 assert_parameter_shapes=assert_parameter_shapes,
                                 generate_params_kwargs=generate_kwargs)  # fmt: skip


def _per_sample_layers(model: nnx.Module, conv_paths: FrozenSet[Tuple[Any, ...]]) -> None:
    """On the merged copy the sample ``vmap`` runs: batch norm layers also reduce over the
    sample axis (whole-batch statistics with per-sample weights), and convolutions whose
    kernel is generated (module paths ``conv_paths``) run as patches times kernel
    (:mod:`hypernn.transform.jaxconv`)."""
    for path, node in nnx.graph.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            node.axis_name = with_sample_axis(node.axis_name)
        elif isinstance(node, nnx.Conv) and tuple(path) in conv_paths and node.conv_general_dilated is lax.conv_general_dilated:
            node.conv_general_dilated = patches_conv


def _merge_sample_state(updated: nnx.State) -> nnx.State:
    """One state from ``B`` per-sample ones: the model's own state (batch statistics,
    reduced over the sample axis, and RNG counts: equal in every sample) from sample 0;
    sown intermediates per sample, laid out like the outputs."""
    flat = []
    for path, variable in nnx.to_flat_state(updated):
        if isinstance(variable, nnx.Cache):
            raise UnsupportedModelError(
                f"per-sample weights cannot update the cache `{'.'.join(map(str, path))}` (each sample would write "
                f"its own state); pass one condition (shape (C,)) for the whole batch."
            )
        if isinstance(variable, nnx.Intermediate):
            variable = variable.replace(jax.tree_util.tree_map(drop_sample_batch_axis, variable[...]))
        else:
            variable = variable.replace(variable[...][0])
        flat.append((path, variable))
    return nnx.from_flat_state(flat)
