"""Dynamic linen hypernetworks: weights generated from a condition, per sample, batched.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn import hypernetize
    >>> hnet = hypernetize(nn.Dense(2), embedding_dim=3, num_embeddings=2, condition_dim=5)
    >>> x, c = jnp.ones((6, 4)), jnp.ones((6, 5))
    >>> variables = hnet.init(jax.random.key(0), x, condition=c)
    >>> hnet.apply(variables, x, condition=c).shape       # weight set i for sample i
    (6, 2)
    >>> hnet.apply(variables, x, condition=c[0]).shape    # one weight set for the batch
    (6, 2)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...calling import call_arguments, call_hypernetwork, check_condition_keyword, check_conditioning_kwargs, route_condition
from ...errors import ConditionError, UnsupportedModelError
from ..jaxconditions import check_condition
from ..jaxconv import patches_conv
from ..jaxpersample import drop_sample_batch_axis, map_samples, split_keys, with_sample_axis
from ..jaxutil import check_chunks, check_generated_params, with_attribute
from . import conditioning, factories
from .lowrank import factored_dense, frozen_kernels, split_generated
from .module import HypernetizedLinen, LinenHypernetwork, _checked, check_call_signature

__all__ = ["DynamicHypernetizedLinen", "LinenDynamicHypernetwork", "check_dynamic_call_signature"]

#: collections whose per-sample updates cannot be merged into one (a decoding cache)
_PER_SAMPLE_STATE = ("cache",)


def check_dynamic_call_signature(cls: type, condition_keyword: bool) -> None:
    """The checks of a static hypernetwork, plus: the model must not take ``condition``
    (unless ``condition_keyword=False``)."""
    check_call_signature(cls)
    check_condition_keyword(cls.__call__, f"{cls.__name__}.__call__", condition_keyword)


def _per_sample_layers(conv_paths: FrozenSet[Tuple[str, ...]]) -> Callable[..., Any]:
    """An interceptor for the model's layers under the sample ``vmap``: batch norm layers
    also reduce over the sample axis (whole-batch statistics with per-sample weights), and
    convolutions whose kernel is generated (their module paths: ``conv_paths``) run as
    patches times kernel (:mod:`hypernn.transform.jaxconv`). Attributes are restored after."""

    def intercept(next_fun: Any, args: Tuple, kwargs: Dict, context: Any) -> Any:
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.BatchNorm):
            attribute, value = "axis_name", with_sample_axis(module.axis_name)
        elif (isinstance(module, nn.Conv) and module.conv_general_dilated is None
              and module.conv_general_dilated_cls is None and tuple(module.scope.path) in conv_paths):  # fmt: skip
            attribute, value = "conv_general_dilated", patches_conv
        else:
            return next_fun(*args, **kwargs)
        return with_attribute(module, attribute, value, next_fun, *args, **kwargs)

    return intercept


class LinenDynamicHypernetwork(LinenHypernetwork):
    """A linen hypernetwork whose generated weights depend on a condition, per sample.

    ``hnet.apply(variables, x, condition=c)``: ``c`` of shape ``(B, C)`` generates weight set
    ``i`` for sample ``i`` (output ``i`` equals the model applied with weight set ``i`` to
    ``x[i:i+1]``); ``c`` of shape ``(C,)`` generates one weight set for the whole batch.
    With ``num_conditions=T``, ``c`` holds integer ids (shape ``(B,)`` or ``()``).

    Per-sample weights run under ``jax.vmap`` (rules: :mod:`hypernn.transform.jaxpersample`):
    independent dropout masks per sample, and batch norm as conditional batch norm
    (whole-batch statistics, running averages updated once, per-sample scale and shift).
    """

    # ------------------------------------------------------------ modules

    def setup(self) -> None:
        options = self.hypernn_options()
        if options.num_conditions is not None:
            self.condition_embedding = nn.Embed(options.num_conditions, self.condition_dim)
        factory = conditioning.resolve(options.condition_factory)
        self.condition_module = _checked(factory(self.condition_dim, self.num_embeddings, self.embedding_dim),
                                         "condition_factory")  # fmt: skip
        super().setup()

    def make_weight_generator(self) -> nn.Module:
        """Build the weight generator (its input: the conditioned embeddings)."""
        factory = factories.resolve(self.hypernn_options().generator_factory) or factories.default_generator
        return _checked(factory(self.generator_input_dim, self.layout.chunk_dim), "generator_factory")

    @property
    def condition_dim(self) -> int:
        options = self.hypernn_options()
        return options.condition_dim or options.embedding_dim

    @property
    def num_conditions(self) -> Optional[int]:
        return self.hypernn_options().num_conditions

    @property
    def generator_input_dim(self) -> int:
        """Width of the conditioned chunk embeddings the generator sees."""
        return getattr(self.condition_module, "output_dim", self.embedding_dim)

    def _own_keywords(self) -> Tuple[str, ...]:
        condition = ("condition",) if self.hypernn_options().condition_keyword else ()
        return super()._own_keywords() + condition

    def _probe_arguments(self) -> Tuple[Any, ...]:
        if self.num_conditions is not None:
            return (jnp.zeros((1,), jnp.int32),)
        return (jnp.zeros((1, self.condition_dim)),)

    # ------------------------------------------------------------ generating

    def generate_params(self, condition: Any = None, **kwargs: Any) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """Generate ``(flat, aux)``: ``flat`` is ``(generated_size,)`` for one condition or
        ``(B, generated_size)`` for a batch; ``aux`` holds the conditioned ``"embedding"`` and
        whatever the conditioning module adds (e.g. ``"hidden_state"``)."""
        accepted = set(call_arguments(type(self.condition_module).__call__)) - {"self", "embedding", "condition"}
        check_conditioning_kwargs(accepted, type(self.condition_module).__name__, kwargs)
        vectors = check_condition(condition, condition_dim=self.condition_dim, num_conditions=self.num_conditions)
        if self.num_conditions is not None:
            vectors = self.condition_embedding(vectors)
        embedding, aux = self.condition_module(self.embedding_module(jnp.arange(self.num_embeddings)), vectors, **kwargs)
        chunks = self.weight_generator(embedding)
        lead = tuple(vectors.shape[:-1])
        check_chunks(chunks, self.num_embeddings, self.weight_chunk_dim, self.generator_input_dim, lead)
        return self.start_values_map(chunks.reshape(*lead, -1)), {"embedding": embedding, **aux}

    def _calibration_raw(self) -> jax.Array:
        """The raw output at the zero condition (id 0 with ``num_conditions``), as for torch and NNX."""
        (vectors,) = self._probe_arguments()
        if self.num_conditions is not None:
            vectors = self.condition_embedding(vectors)
        embedding, _ = self.condition_module(self.embedding_module(jnp.arange(self.num_embeddings)), vectors)
        return self.weight_generator(embedding).reshape(-1)

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Like the static check, but a ``(B, n)`` batch of vectors is valid too."""
        check_generated_params(generated_params, self.layout, batched=True)

    def generated_variables(self, **generate_params_kwargs: Any) -> Dict[str, Any]:
        """The ``params`` collection for the original module, for one condition."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        if flat.ndim != 1:
            raise ConditionError("generated_variables needs one condition (shape (C,) or one id), not a batch.")
        return self._target_params(flat, self.get_variable("params", "target_network"))

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Apply the model with one weight set (a vector) or one per sample (``(B, n)``)."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        if generated_params.ndim == 1:
            return super().target_forward(*args, generated_params=generated_params,
                                          assert_parameter_shapes=False, **kwargs)  # fmt: skip
        batch = generated_params.shape[0]
        call = self._target_call(args, kwargs)
        target = self.hypernn_target()
        intercept = _per_sample_layers(frozenset(path[:-1] for _, path in self.plan.slots if path[-1] == "kernel"))
        tensors, factors = split_generated(self, generated_params)  # factored Dense kernels: W0 + per-sample factors
        frozen, plan = frozen_kernels(self, factors), self.plan

        def run(sample: Any, *sample_args: Any, shared: Any, **sample_kwargs: Any) -> Any:
            (tensors, factors), keys = sample
            variables = {"params": self._params_tree({**tensors, **frozen}, shared["kept"]), **shared["state"]}
            with nn.intercept_methods(intercept), factored_dense(plan, factors):
                result = target.apply(variables, *sample_args, rngs=keys, mutable=call.mutable, **sample_kwargs)
            return result if call.mutable else (result, {})

        output, updates = map_samples(run, ((tensors, factors), split_keys(call.rngs, batch)), args, kwargs,
                                      batch=batch, shared={"kept": call.kept, "state": call.state})  # fmt: skip
        if call.mutable:
            self._write_back(call, _merge_sample_updates(updates, call.collections))
        return output

    @nn.compact
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
        """``hnet.apply(variables, x, condition=c)``; the other keywords as for a static one."""
        generate_kwargs = route_condition(condition, generate_params_kwargs, kwargs,
                                          self.hypernn_options().condition_keyword)  # fmt: skip
        return call_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                 assert_parameter_shapes=assert_parameter_shapes,
                                 generate_params_kwargs=generate_kwargs)  # fmt: skip


def _merge_sample_updates(updates: Mapping[str, Mapping[str, Any]], existing: Mapping[str, Any]) -> Dict[str, Any]:
    """One update per collection from ``B`` per-sample ones: the model's own state (batch
    statistics, reduced over the sample axis, so equal in every sample) from sample 0;
    collections created by the call (sown ``intermediates``) per sample, laid out like the
    outputs."""
    merged: Dict[str, Any] = {}
    for collection, keyed in updates.items():
        if collection in _PER_SAMPLE_STATE:
            raise UnsupportedModelError(
                f"per-sample weights cannot update the `{collection}` collection (each sample would write its own "
                f"state); pass one condition (shape (C,)) for the whole batch, or do not make `{collection}` mutable."
            )
        if collection in existing:
            merged[collection] = jax.tree_util.tree_map(lambda leaf: leaf[0], keyed)
        else:
            merged[collection] = jax.tree_util.tree_map(drop_sample_batch_axis, keyed)
    return merged


class DynamicHypernetizedLinen(LinenDynamicHypernetwork, HypernetizedLinen):
    """A dynamic hypernetwork for a given linen module instance (what
    ``hypernetize(model, condition_dim=...)`` returns)."""
