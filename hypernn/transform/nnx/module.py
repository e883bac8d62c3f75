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
import numpy as np
from flax import nnx

from ...calling import call_hypernetwork, check_reserved, reject_generate_kwargs
from ...errors import GeneratorOutputError, OptionTypeError, UnsupportedModelError
from ...init import calibrate, common_scale_of
from ...layout import Layout, plan_layout
from ...lowrank import LowRankWeight, factor_entries, select_low_rank
from ...options import HypernetizeOptions
from ...selection import Selection, Selector, select
from ...specs import ParamSpec
from ...diagnostics import HypernetworkSummary, summarize
from ...targets import slot_targets, start_targets, start_values
from ..jaxstart import merge_low_rank
from ..jaxutil import check_chunks, check_generated_params, unflatten
from . import factories
from .introspect import FrozenWeight, GeneratedSlot, freeze_weights, param_specs, replace_with_slots, slot_paths
from .lowrank import factor_linears, factored_kernels, split_generated
from .start import build_output_affine, fold_common_scale, is_traced, measure

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
        init: str = "hyperfan",
        warm_start: Optional[bool] = None,
        low_rank: Optional[int] = None,
        low_rank_scale: float = 1.0,
    ):
        options = HypernetizeOptions(
            embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk_dim, layout=layout,
            targets=targets, exclude=exclude, embedding_factory=embedding_factory,
            generator_factory=generator_factory, inplace=inplace, init=init, warm_start=warm_start,
            low_rank=low_rank, low_rank_scale=low_rank_scale,
        )  # fmt: skip
        self._build(model, options, rngs)

    def _build(self, model: nnx.Module, options: HypernetizeOptions, rngs: Any) -> None:
        _check_model(model, rngs)
        self._check_call_arguments(model, options)
        name = type(model).__name__
        specs = param_specs(model)
        chosen = self._select(specs, options, name)
        #: the low-rank kernels whose nnx.Linear runs them factored (see :mod:`.lowrank`)
        self.factored_kernels = factored_kernels(specs, self.low_rank_weights)
        entries = factor_entries(self.low_rank_weights) if options.low_rank else chosen
        self.layout: Layout = plan_layout(entries, kind=options.layout, num_embeddings=options.num_embeddings,
                                          chunk_dim=options.chunk_dim)  # fmt: skip
        self.selection = Selection(tuple(s.without_value() for s in chosen), name)
        self.init_scheme, self.warm_start = options.init, options.starts_at_model
        self.low_rank, self.low_rank_scale = options.low_rank, float(options.low_rank_scale)
        self.target_inits = slot_targets(specs, chosen, self.low_rank_weights, convention="flax", measure=measure)
        self.num_model_parameters = sum(s.size for s in specs if s.kind == "parameter")
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
        output_affine = self._start(options, chosen, embedding_module, weight_generator, extra)
        # Everything that can fail on user input has run: now change state.
        target = model if options.inplace else nnx.merge(*nnx.split(model), **_MERGE_COPY)
        replace_with_slots(target, [] if options.low_rank else chosen)
        freeze_weights(target, chosen if options.low_rank else [])
        for attribute, module in extra.items():
            setattr(self, attribute, module)
        self.embedding_module = embedding_module
        self.weight_generator = weight_generator
        self.output_affine = output_affine
        self.target_network = target
        self._slot_paths = slot_paths(target)

    def _select(self, specs: Any, options: HypernetizeOptions, model_name: str) -> Tuple[ParamSpec, ...]:
        """The selected tensors; with ``low_rank`` also plans :attr:`low_rank_weights`."""
        self.low_rank_weights: Tuple[LowRankWeight, ...] = ()
        if not options.low_rank:
            return select(specs, targets=options.targets, exclude=options.exclude, model_name=model_name).chosen
        selection, self.low_rank_weights = select_low_rank(
            specs, targets=options.targets, exclude=options.exclude, rank=options.low_rank, convention="flax",
            model_name=model_name,
        )  # fmt: skip
        return selection.chosen

    def _raw_output(self, embedding_module: nnx.Module, weight_generator: nnx.Module, extra: Dict[str, nnx.Module]) -> jax.Array:
        """The generator's raw flat output now, computed on copies (no state changes)."""
        copies = {name: nnx.clone(module) for name, module in extra.items()}
        return self._probe_chunks(nnx.clone(embedding_module), nnx.clone(weight_generator), copies).reshape(-1)

    def _start(self, options: HypernetizeOptions, chosen: Any, embedding_module: nnx.Module,
               weight_generator: nnx.Module, extra: Dict[str, nnx.Module]) -> Any:  # fmt: skip
        """Hyperfan: fold the common scale into the generator, then plan the per-tensor map."""
        raw = self._raw_output(embedding_module, weight_generator, extra)
        if options.init == "hyperfan":
            scales, _ = calibrate(self.layout, raw, self.target_inits, xp=jnp)
            linear = isinstance(weight_generator, (nnx.Linear, factories.MLPGenerator))
            raw = fold_common_scale(weight_generator, self.weight_chunk_dim, common_scale_of(self.layout, scales, jnp),
                                    raw, lambda: self._raw_output(embedding_module, weight_generator, extra),
                                    linear=linear)  # fmt: skip
        start = start_values(chosen, self.low_rank_weights) if self.warm_start else None
        concrete = start and not any(is_traced(v) for v in start.values())
        self.start_targets = (start_targets(self.layout, self.target_inits, start, low_rank=bool(self.low_rank_weights))
                              if concrete else self.target_inits)  # fmt: skip
        return build_output_affine(self.layout, raw, self.target_inits, init=options.init, start=start)

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
        return self.start_map(chunks.reshape(-1)), {"embedding": embedding}

    def start_map(self, raw: jax.Array) -> jax.Array:
        """The fixed map from the generator's raw flat output to generated values
        (:attr:`output_affine`: hyperfan scale, warm start; identity with ``init="default"``)."""
        return raw if self.output_affine is None else self.output_affine(raw)

    def _low_rank_bases(self) -> Dict[str, jax.Array]:
        """Each low-rank weight's frozen ``W0`` by name."""
        return {variable.get_metadata()["slot_name"]: variable[...]
                for _, variable in nnx.to_flat_state(nnx.state(self.target_network, FrozenWeight))}  # fmt: skip

    def target_tensors(self, generated_params: jax.Array) -> Dict[str, jax.Array]:
        """The generated tensors by their names in the model (low-rank weights merged:
        ``W0 + scale * (A @ B).T``); leading (per-sample) dims kept."""
        tensors = unflatten(generated_params, self.layout)
        if not self.low_rank_weights:
            return tensors
        return merge_low_rank(tensors, self.low_rank_weights, self._low_rank_bases(), self.low_rank_scale)

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` fits :attr:`layout`."""
        check_generated_params(generated_params, self.layout)

    def _merged(self, generated_params: jax.Array, slot_type: type, *, factored: bool = False) -> nnx.Module:
        """A copy of the target with the generated arrays in place (as ``slot_type``); with
        ``factored``, low-rank ``nnx.Linear`` kernels stay ``W0`` and their layers add the
        factored delta (:mod:`.lowrank`), otherwise every kernel is merged."""
        if factored:
            tensors, factors = split_generated(self, generated_params)
        else:
            tensors, factors = self.target_tensors(generated_params), {}
        graphdef, state = nnx.split(self.target_network)
        flat = dict(nnx.to_flat_state(state))
        for path, name in self._slot_paths:
            flat[path] = slot_type(tensors[name] if name in tensors else flat[path][...])
        model = nnx.merge(graphdef, nnx.from_flat_state(flat), **_MERGE_COPY)
        factor_linears(model, self._slot_paths, factors)
        return model

    def generated_state(self, **generate_params_kwargs: Any) -> nnx.State:
        """The original model's ``nnx.Param`` state (same paths), generated and unselected."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        return nnx.state(self._merged(flat, nnx.Param), nnx.Param)

    def materialize(self, **generate_params_kwargs: Any) -> nnx.Module:
        """A plain copy of the model (its own class) with the generated weights as Params."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        return self._merged(flat, nnx.Param)

    # ------------------------------------------------------------ diagnostics

    def summary(self, **generate_params_kwargs: Any) -> HypernetworkSummary:
        """Per generated tensor: name, shape, chunks, generated mean/std now vs the target
        layer's own init; totals: model parameters, trainable hypernetwork parameters
        (``nnx.Param``), compression ratio. ``print(hnet.summary())`` shows a table."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        return self._summary(flat, "")

    def _summary(self, flat: jax.Array, note: str) -> HypernetworkSummary:
        settings = f"init={self.init_scheme!r}, warm_start={self.warm_start}"
        if self.low_rank:
            settings += f", low_rank={self.low_rank} (scale {self.low_rank_scale:g})"
        count = lambda *filters: sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(self, *filters)))  # noqa: E731
        base = 0 if self.output_affine is None or self.output_affine.base is None else self.layout.generated_size
        return summarize(
            self.layout, np.asarray(flat, dtype=np.float64), self.start_targets, model_name=self.selection.model_name,
            target_params=self.num_model_parameters, hypernetwork_params=count(nnx.Param), settings=settings + note,
            frozen_params=count(FrozenWeight) + base, replaced_values=sum(w.size for w in self.low_rank_weights),
        )  # fmt: skip

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the target with ``generated_params`` in place of the selected parameters."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        model = self._merged(generated_params, GeneratedSlot, factored=True)
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
