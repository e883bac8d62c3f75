"""The NNX hypernetwork: an ``nnx.Module`` whose selected ``nnx.Param`` leaves are generated.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    >>> hnet = HypernetizedNNX(model, embedding_dim=3, num_embeddings=2, rngs=nnx.Rngs(1))
    >>> hnet(jnp.ones((5, 4))).shape
    (5, 2)
    >>> sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(hnet, nnx.Param)))
    ['embedding_module.embedding', 'weight_generator.bias', 'weight_generator.kernel']
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from ...calling import call_hypernetwork, check_reserved, reject_generate_kwargs
from ...errors import GeneratorOutputError, OptionTypeError, UnsupportedModelError
from ...layout import Layout, plan_layout
from ...options import HypernetizeOptions
from ...selection import Selection, Selector, select
from ..jaxutil import check_chunks, check_generated_params, unflatten
from . import factories
from .introspect import GeneratedSlot, param_specs, replace_with_slots, slot_paths

__all__ = ["HypernetizedNNX"]


# flax >= 0.11 ``nnx.merge`` reuses the state's Variable objects unless ``copy=True``
# (older versions always build new ones): ask for copies, so that merged models never
# share Variables with the user's model or with ``target_network``.
_MERGE_COPY = {"copy": True} if "copy" in inspect.signature(nnx.merge).parameters else {}


def _check_model(model: Any, rngs: Any) -> None:
    if not isinstance(model, nnx.Module):
        raise UnsupportedModelError(f"`model` must be an flax.nnx.Module; got {type(model).__name__} ({model!r:.80}).")
    if not isinstance(rngs, nnx.Rngs):
        raise OptionTypeError(
            f"an NNX hypernetwork needs `rngs=nnx.Rngs(...)` for its own modules; got {rngs!r}."
        )


class HypernetizedNNX(nnx.Module):
    """A hypernetwork that generates the selected ``nnx.Param`` leaves of an NNX model.

    The call runs ``embedding_module(arange(num_embeddings))`` through
    ``weight_generator`` to ``(num_embeddings, chunk_dim)``, cuts it into the selected
    arrays by :attr:`layout`, splits :attr:`target_network` (``nnx.split``), puts the
    generated arrays in place of the selected parameters, merges and calls it. Updated
    non-parameter state (``BatchStat``, RNG counts) is written back to
    :attr:`target_network`; nothing else changes.

    What is shared with the given model: its arrays (immutable); its Variables are not
    shared unless ``inplace=True``, which makes the model object itself the
    :attr:`target_network` (its selected parameters become empty :class:`GeneratedSlot`).

    Args: see :func:`hypernn.hypernetize`; ``rngs`` (required) initialises the
    hypernetwork's own modules. NNX factories are called with ``rngs=`` too.
    """

    def __init__(
        self,
        model: nnx.Module,
        *,
        embedding_dim: int,
        num_embeddings: Optional[int] = None,
        chunk_dim: Optional[int] = None,
        layout: str = "global",
        targets: Selector = None,
        exclude: Selector = None,
        embedding_factory: Optional[Callable[..., nnx.Module]] = None,
        generator_factory: Optional[Callable[..., nnx.Module]] = None,
        inplace: bool = False,
        rngs: Optional[nnx.Rngs] = None,
    ):
        options = HypernetizeOptions(
            embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk_dim, layout=layout,
            targets=targets, exclude=exclude, embedding_factory=embedding_factory,
            generator_factory=generator_factory, inplace=inplace,
        )  # fmt: skip
        self._build(model, options, rngs)

    def _build(self, model: nnx.Module, options: HypernetizeOptions, rngs: Any) -> None:
        _check_model(model, rngs)
        self._check_call_arguments(model, options)
        name = type(model).__name__
        chosen = select(param_specs(model), targets=options.targets, exclude=options.exclude, model_name=name).chosen
        self.layout: Layout = plan_layout(chosen, kind=options.layout, num_embeddings=options.num_embeddings,
                                          chunk_dim=options.chunk_dim)  # fmt: skip
        self.selection = Selection(tuple(s.without_value() for s in chosen), name)
        self.embedding_dim = self.generator_input_dim = options.embedding_dim
        self.num_embeddings = self.layout.num_chunks
        self.weight_chunk_dim = self.layout.chunk_dim
        self._factories = (factories.resolve(options.embedding_factory) or factories.default_embedding,
                           factories.resolve(options.generator_factory) or factories.default_generator)  # fmt: skip
        extra = self._make_extra_modules(options, rngs)
        embedding_module = self._checked_module(self.make_embedding_module(rngs), "embedding_factory")
        weight_generator = self._checked_module(self.make_weight_generator(rngs), "generator_factory")
        del self._factories
        self._probe(embedding_module, weight_generator, extra)
        # Everything that can fail on user input has run: now change state.
        target = model if options.inplace else nnx.merge(*nnx.split(model), **_MERGE_COPY)
        replace_with_slots(target, chosen)
        for attribute, module in extra.items():
            setattr(self, attribute, module)
        self.embedding_module = embedding_module
        self.weight_generator = weight_generator
        self.target_network = target
        self._slot_paths = slot_paths(target)

    # ------------------------------------------------------------ construction

    def _check_call_arguments(self, model: nnx.Module, options: HypernetizeOptions) -> None:
        check_reserved(model.__call__, f"{type(model).__name__}.__call__")

    def _make_extra_modules(self, options: HypernetizeOptions, rngs: nnx.Rngs) -> Dict[str, nnx.Module]:
        """Modules besides the embedding and generator (none for a static hypernetwork)."""
        return {}

    def make_embedding_module(self, rngs: nnx.Rngs) -> nnx.Module:
        """Build the chunk embedding module; override in subclasses to customise."""
        return self._factories[0](self.num_embeddings, self.embedding_dim, rngs=rngs)

    def make_weight_generator(self, rngs: nnx.Rngs) -> nnx.Module:
        """Build the weight generator; override in subclasses to customise."""
        return self._factories[1](self.generator_input_dim, self.weight_chunk_dim, rngs=rngs)

    @staticmethod
    def _checked_module(module: Any, argument: str) -> nnx.Module:
        if not isinstance(module, nnx.Module):
            raise OptionTypeError(f"`{argument}` must return an nnx.Module; it returned {type(module).__name__}.")
        return module

    #: the condition batch of the probe (a dynamic hypernetwork probes with one condition)
    _probe_batch: Tuple[int, ...] = ()

    def _probe_chunks(self, embedding_module: nnx.Module, weight_generator: nnx.Module, extra: Dict[str, nnx.Module]) -> Any:
        """The generator's output for the probe (run under ``nnx.eval_shape``)."""
        return weight_generator(embedding_module(jnp.arange(self.num_embeddings)))

    def _probe(self, embedding_module: nnx.Module, weight_generator: nnx.Module, extra: Dict[str, nnx.Module]) -> None:
        """Trace the new modules abstractly (no state changes) to check output shapes."""
        try:
            chunks = nnx.eval_shape(lambda e, g, x: self._probe_chunks(e, g, x), embedding_module, weight_generator, extra)
        except Exception as err:
            raise GeneratorOutputError(
                f"running the embedding module and weight generator on arange({self.num_embeddings}) failed: "
                f"{type(err).__name__}: {err}. The generator must map (num_embeddings, embedding_dim)="
                f"({self.num_embeddings}, {self.generator_input_dim}) to ({self.num_embeddings}, {self.weight_chunk_dim})."
            ) from err
        check_chunks(chunks, self.num_embeddings, self.weight_chunk_dim, self.generator_input_dim, self._probe_batch)

    # ------------------------------------------------------------ generating

    @property
    def num_target_parameters(self) -> int:
        return self.layout.num_params

    def generate_params(self, **kwargs: Any) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """Generate the flat parameter vector: ``(flat, {"embedding": embedding})``."""
        reject_generate_kwargs(type(self).__name__, kwargs)
        embedding = self.embedding_module(jnp.arange(self.num_embeddings))
        chunks = self.weight_generator(embedding)
        check_chunks(chunks, self.num_embeddings, self.weight_chunk_dim, self.embedding_dim)
        return chunks.reshape(-1), {"embedding": embedding}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` fits :attr:`layout`."""
        check_generated_params(generated_params, self.layout)

    def _merged(self, generated_params: jax.Array, slot_type: type) -> nnx.Module:
        """A copy of the target with the generated arrays in place (as ``slot_type``)."""
        tensors = unflatten(generated_params, self.layout)
        graphdef, state = nnx.split(self.target_network)
        flat = dict(nnx.to_flat_state(state))
        for path, name in self._slot_paths:
            flat[path] = slot_type(tensors[name])
        return nnx.merge(graphdef, nnx.from_flat_state(flat), **_MERGE_COPY)

    def generated_state(self, **generate_params_kwargs: Any) -> nnx.State:
        """The original model's ``nnx.Param`` state (same paths), generated and unselected."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        return nnx.state(self._merged(flat, nnx.Param), nnx.Param)

    def materialize(self, **generate_params_kwargs: Any) -> nnx.Module:
        """A plain copy of the model (its own class) with the generated weights as Params."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        return self._merged(flat, nnx.Param)

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the target with ``generated_params`` in place of the selected parameters."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        model = self._merged(generated_params, GeneratedSlot)
        output = model(*args, **kwargs)
        # Write back what the call changed (BatchStat, RNG counts), never the generated arrays.
        nnx.update(self.target_network, nnx.state(model, nnx.Not(nnx.Any(nnx.Param, GeneratedSlot))))
        return output

    def __call__(
        self,
        *args: Any,
        generated_params: Optional[jax.Array] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Generate the weights (unless ``generated_params`` is given) and call the model.

        Returns the model's output, or ``(output, generated_params, aux)`` with
        ``has_aux=True`` (``aux`` is ``{}`` when ``generated_params`` was given).
        """
        return call_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                 assert_parameter_shapes=assert_parameter_shapes,
                                 generate_params_kwargs=generate_params_kwargs)  # fmt: skip
