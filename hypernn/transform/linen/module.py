"""The flax linen hypernetwork: a linen ``Module`` whose selected ``params`` are generated.

Its variables: ``params`` holds ``embedding_module``, ``weight_generator`` and, under
``target_network``, the unselected params of the model (in the model's own tree
structure); every other collection of the model (``batch_stats``, ``cache``, ...) sits at
the top level in exactly the model's structure, so it moves between the two unchanged.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn import hypernetize
    >>> hnet = hypernetize(nn.Dense(2), embedding_dim=3, num_embeddings=2)
    >>> variables = hnet.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> sorted(variables["params"])
    ['embedding_module', 'weight_generator']
    >>> hnet.apply(variables, jnp.ones((5, 4))).shape
    (5, 2)
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.scope import is_filter_empty, subtract_filters

from ...init import calibrate, common_scale_of
from ...calling import RESERVED_KEYWORDS, call_hypernetwork, check_reserved, reject_generate_kwargs
from ...default_inits import TargetInit
from ...factories import MLPGeneratorSpec
from ...errors import ConfigurationError, GeneratorOutputError, OptionTypeError, UnsupportedModelError
from ...layout import Layout, plan_layout
from ...lowrank import LowRankWeight, factor_entries, select_low_rank
from ...options import HypernetizeOptions
from ...selection import Selection, select
from ...targets import slot_targets, start_targets, start_values
from ..jaxstart import merge_low_rank
from ..jaxutil import check_chunks, check_generated_params, set_path, unflatten
from . import factories
from .introspect import Structure, trace_structure
from .lowrank import factored_dense, frozen_kernels, split_generated
from .start import COLLECTION, apply_start, fold_common_scale, measure, warm_base

__all__ = ["HypernetizedLinen", "LinenHypernetwork", "LinenPlan", "Opaque", "TargetCall"]

#: keywords of flax's own ``init``/``apply`` (not the model's): never part of a lazy trace
_FLAX_KEYWORDS = ("rngs", "mutable", "capture_intermediates")


class Opaque:
    """Holds a value as a linen field without linen adopting it (modules) or comparing it
    (arrays): hashed and compared by identity."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"{type(self.value).__name__}(...)"


@dataclasses.dataclass(frozen=True)
class LinenPlan:
    """Everything computed once per model structure: selection, layout, collections."""

    structure: Structure
    selection: Selection
    layout: Layout
    #: ``(generated name, path inside params)``
    slots: Tuple[Tuple[str, Tuple[str, ...]], ...]
    #: paths inside params that stay ordinary (unselected) parameters
    kept: Tuple[Tuple[str, ...], ...]
    #: each slot's hyperfan target and what a summary compares it with
    targets: Tuple[TargetInit, ...] = ()
    start_targets: Tuple[TargetInit, ...] = ()
    #: ``low_rank``: the adapted kernels (their factors are the layout's slots)
    low_rank_weights: Tuple[LowRankWeight, ...] = ()
    warm_start: bool = False
    init: str = "default"
    #: the model's parameter count (tied once)
    num_model_parameters: int = 0

    @property
    def has_start_map(self) -> bool:
        """Whether raw generator output passes through the start map (:mod:`.start`)."""
        return self.init == "hyperfan" or self.warm_start

    @property
    def uses_start_collection(self) -> bool:
        """Whether the hypernetwork keeps a :data:`~hypernn.transform.linen.start.COLLECTION`
        (the start map, warm start's base, low-rank ``W0``)."""
        return self.has_start_map or bool(self.low_rank_weights)


def check_model(module: Any) -> None:
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"`model` must be a flax.linen.Module; got {type(module).__name__} ({module!r:.80}).")
    check_call_signature(type(module))


def check_call_signature(cls: type) -> None:
    """Raise :class:`ReservedArgumentError` if ``cls.__call__`` takes a reserved keyword."""
    check_reserved(cls.__call__, f"{cls.__name__}.__call__")


def make_plan(module: nn.Module, options: HypernetizeOptions, args: Tuple = None, kwargs: Mapping = None) -> LinenPlan:
    """Trace ``module``'s structure (from ``args``/``kwargs`` or the options) and plan it."""
    example_inputs = options.example_inputs if args is None else args
    init_kwargs = options.init_kwargs if kwargs is None else kwargs
    if example_inputs is None and options.variables is None:
        raise OptionTypeError(
            f"a linen hypernetwork needs the variable structure of {type(module).__name__}: pass "
            f"`example_inputs=(x, ...)` (and `init_kwargs=` such as `{{'train': False}}`) or `variables=` "
            f"to hypernetize, or call `hnet.init(key, x, ...)` directly."
        )
    structure = trace_structure(module, example_inputs=example_inputs, init_kwargs=init_kwargs, variables=options.variables)
    name = type(module).__name__
    weights: Tuple[LowRankWeight, ...] = ()
    if options.low_rank:
        selection, weights = select_low_rank(structure.specs, targets=options.targets, exclude=options.exclude,
                                             rank=options.low_rank, convention="flax", model_name=name)  # fmt: skip
    else:
        selection = select(structure.specs, targets=options.targets, exclude=options.exclude, model_name=name)
    entries = factor_entries(weights) if weights else selection.chosen
    layout = plan_layout(entries, kind=options.layout, num_embeddings=options.num_embeddings,
                         chunk_dim=options.chunk_dim)  # fmt: skip
    paths = dict(structure.param_paths)
    chosen = set(selection.names)
    slots = tuple((n, paths[n]) for n in selection.names)
    kept = tuple(path for n, path in structure.param_paths if n not in chosen)
    stripped = Selection(tuple(s.without_value() for s in selection.chosen), name)
    targets = slot_targets(structure.specs, selection.chosen, weights, convention="flax", measure=measure)
    warm = options.starts_at_model
    if warm and not weights and options.variables is None:
        raise ConfigurationError(
            f"`warm_start=True` for a linen model starts from its trained variables: pass them as `variables=` "
            f"(a linen {name} holds no weights of its own to start from)."
        )
    start = start_values(selection.chosen, weights) if warm else None
    shown = start_targets(layout, targets, start, low_rank=bool(weights))
    count = sum(s.size for s in structure.specs if s.kind == "parameter")
    return LinenPlan(structure, stripped, layout, slots, kept, targets, shown, weights, warm, options.init, count)


@dataclasses.dataclass(frozen=True)
class TargetCall:
    """The model's variables and arguments for one ``apply`` (besides the generated params)."""

    #: the unselected params (``None`` when every param is generated)
    kept: Any
    #: collection -> key -> this module's variable holding the model's state
    collections: Mapping[str, Mapping[str, Any]]
    #: collection -> key -> value of that state
    state: Mapping[str, Mapping[str, Any]]
    mutable: Any
    rngs: Mapping[str, jax.Array]


def _plan_identity(plan: LinenPlan) -> Tuple:
    """What makes two traced plans the same: layout, slots, kept params, collections."""
    return (plan.layout, plan.slots, plan.kept, plan.structure.collections)


def _shape_key(tree: Any) -> Optional[Tuple]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    key = [(tuple(x.shape), str(x.dtype)) if hasattr(x, "shape") else x for x in leaves]
    try:
        hash(tuple(key))
    except TypeError:
        return None
    return (treedef, tuple(key))


def _pick(tree: Mapping, path: Tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


class LinenHypernetwork(nn.Module):
    """The linen hypernetwork's behaviour; subclasses say where the model and options are.

    ``hypernn_plan`` is filled at hypernetize time when the structure is known, else at
    the first ``init``/``apply`` from their arguments (the module is cloned with it).
    """

    hypernn_plan: Optional[LinenPlan] = dataclasses.field(default=None, kw_only=True)

    # -- what subclasses provide
    def hypernn_target(self) -> nn.Module:
        raise NotImplementedError

    def hypernn_options(self) -> HypernetizeOptions:
        raise NotImplementedError

    # ------------------------------------------------------------ planning

    @property
    def plan(self) -> LinenPlan:
        """The plan: given at hypernetize time, or traced by the first ``init``/``apply``."""
        if self.hypernn_plan is not None:
            return self.hypernn_plan
        traced = list({_plan_identity(plan): plan for plan in _plan_cache(self.hypernn_options()).values()}.values())
        if len(traced) == 1:  # e.g. traced at two batch sizes: the same plan
            return traced[0]
        if not traced:
            raise OptionTypeError(
                f"{type(self).__name__} does not know its model's variable structure yet: call `init`/`apply` "
                f"on it directly, or pass `example_inputs=` or `variables=` to hypernetize (needed when it is a "
                f"submodule of another linen module)."
            )
        raise OptionTypeError(
            f"{type(self).__name__} was traced with {len(traced)} different input structures, so it has as many "
            f"plans; pass `example_inputs=` to hypernetize to fix one."
        )

    @property
    def layout(self) -> Layout:
        return self.plan.layout

    @property
    def selection(self) -> Selection:
        return self.plan.selection

    def _planned(self, args: Tuple, kwargs: Mapping) -> "LinenHypernetwork":
        if self.hypernn_plan is not None:
            return self
        call_kwargs = {k: v for k, v in kwargs.items() if k not in self._own_keywords()}
        # one cache per options object (it lives as long as the hypernetwork or its class)
        cache = _plan_cache(self.hypernn_options())
        key = _shape_key((self.hypernn_target(), args, call_kwargs))
        plan = cache.get(key) if key is not None else None
        if plan is None:
            plan = make_plan(self.hypernn_target(), self.hypernn_options(), tuple(args), call_kwargs)
            self.clone(hypernn_plan=plan)._probe()
            if key is not None:
                cache[key] = plan
        return self.clone(hypernn_plan=plan)

    def _own_keywords(self) -> Tuple[str, ...]:
        """Keywords of the hypernetwork's call and of flax's apply: never the model's."""
        return RESERVED_KEYWORDS + _FLAX_KEYWORDS

    def _probe_arguments(self) -> Tuple[Any, ...]:
        """Arguments of ``generate_params`` for the shape probe (none for a static one)."""
        return ()

    def _probe(self) -> None:
        """Trace the embedding and generator abstractly to check their output shape."""
        try:
            jax.eval_shape(lambda: self.init(jax.random.key(0), *self._probe_arguments(), method="generate_params"))
        except (GeneratorOutputError, OptionTypeError):  # already clear (a factory returned no module)
            raise
        except Exception as err:
            raise GeneratorOutputError(
                f"running the embedding module and weight generator on arange({self.layout.num_chunks}) failed: "
                f"{type(err).__name__}: {err}."
            ) from err

    def init(self, rngs: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
        planned = self._planned(args, kwargs) if method is None else self._planned_for_method(args, kwargs)
        return planned._folded(nn.Module.init(planned, rngs, *args, method=_method_name(method), **kwargs))

    def init_with_output(self, rngs: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
        planned = self._planned(args, kwargs) if method is None else self._planned_for_method(args, kwargs)
        output, variables = nn.Module.init_with_output(planned, rngs, *args, method=_method_name(method), **kwargs)
        return output, planned._folded(variables)

    def apply(self, variables: Any, *args: Any, method: Any = None, **kwargs: Any) -> Any:
        planned = self._planned(args, kwargs) if method is None else self._planned_for_method(args, kwargs)
        if planned.plan.uses_start_collection and isinstance(variables, Mapping) and COLLECTION not in variables:
            raise OptionTypeError(
                f"`variables` lack the {COLLECTION!r} collection that `init` made (the start map's per-tensor "
                f"scales, a warm-start base, low-rank W0: constants, not trained); pass every collection back, e.g. "
                f"`hnet.apply({{**variables, 'params': params}}, x)`. Collections given: {sorted(variables)}."
            )
        return nn.Module.apply(planned, variables, *args, method=_method_name(method), **kwargs)

    def _planned_for_method(self, args: Tuple, kwargs: Mapping) -> "LinenHypernetwork":
        return self if self.hypernn_plan is not None else self.clone(hypernn_plan=self.plan)

    # ------------------------------------------------------------ modules

    def setup(self) -> None:
        self.embedding_module = self.make_embedding_module()
        self.weight_generator = self.make_weight_generator()
        # measured by init on the generator it draws (see :mod:`.start`)
        if self.plan.has_start_map:
            self.start_constants = self.variable(COLLECTION, "start", self._make_start)
        if self.plan.warm_start:
            self.start_base = self.variable(COLLECTION, "base", self._make_base)

    def _calibration_raw(self) -> jax.Array:
        """The raw flat output the start map is measured on (a static hypernetwork's own)."""
        return self.weight_generator(self.embedding_module(jnp.arange(self.num_embeddings))).reshape(-1)

    def _make_start(self) -> Dict[str, jax.Array]:
        """The per-tensor ``scale``/``shift``: hyperfan's, measured on this draw, or 1 and 0."""
        plan = self.plan
        raw = self._calibration_raw()
        if plan.init == "hyperfan":
            scales, shifts = calibrate(plan.layout, raw, plan.targets, xp=jnp)
        else:
            scales, shifts = jnp.ones(len(plan.layout.slots)), jnp.zeros(len(plan.layout.slots))
        return {"scale": scales.astype(raw.dtype), "shift": shifts.astype(raw.dtype)}

    def _make_base(self) -> jax.Array:
        plan = self.plan
        given = self.hypernn_options().variables
        chosen = [_Value(n, _pick(given["params"], p)) for n, p in plan.slots] if given is not None else []
        start = start_values(chosen, plan.low_rank_weights)
        constants = self.start_constants.value
        return warm_base(plan.layout, self._calibration_raw(), constants["scale"], constants["shift"], start)

    def start_values_map(self, raw: jax.Array) -> jax.Array:
        """The fixed map from the generator's raw flat output to generated values
        (hyperfan scale, warm start; identity with ``init="default"``)."""
        if not self.plan.has_start_map:
            return raw
        base = self.start_base.value if self.plan.warm_start else None
        return apply_start(raw, self.layout, self.start_constants.value, base)

    def _folded(self, variables: Any) -> Any:
        """``init``'s variables with the common hyperfan scale moved into the generator's
        last ``Dense`` (:func:`.start.fold_common_scale`); unchanged otherwise."""
        plan = self.plan
        start = variables.get(COLLECTION, {}).get("start") if isinstance(variables, Mapping) else None
        if plan.init != "hyperfan" or start is None:
            return variables
        factory = self.hypernn_options().generator_factory
        linear = factory is None or isinstance(factory, MLPGeneratorSpec)
        factor = common_scale_of(plan.layout, start["scale"], jnp)
        raw_of = lambda tree: nn.Module.apply(self, tree, method="_calibration_raw")  # noqa: E731
        return fold_common_scale(variables, "weight_generator", plan.layout.chunk_dim, factor, raw_of, linear=linear)

    def make_embedding_module(self) -> nn.Module:
        """Build the chunk embedding module; override in subclasses to customise."""
        factory = factories.resolve(self.hypernn_options().embedding_factory) or factories.default_embedding
        return _checked(factory(self.layout.num_chunks, self.hypernn_options().embedding_dim), "embedding_factory")

    def make_weight_generator(self) -> nn.Module:
        """Build the weight generator; override in subclasses to customise."""
        factory = factories.resolve(self.hypernn_options().generator_factory) or factories.default_generator
        return _checked(factory(self.hypernn_options().embedding_dim, self.layout.chunk_dim), "generator_factory")

    # ------------------------------------------------------------ generating

    @property
    def num_embeddings(self) -> int:
        return self.layout.num_chunks

    @property
    def embedding_dim(self) -> int:
        return self.hypernn_options().embedding_dim

    @property
    def weight_chunk_dim(self) -> int:
        return self.layout.chunk_dim

    @property
    def num_target_parameters(self) -> int:
        return self.layout.num_params

    def generate_params(self, **kwargs: Any) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """Generate the flat parameter vector: ``(flat, {"embedding": embedding})``."""
        reject_generate_kwargs(type(self).__name__, kwargs)
        embedding = self.embedding_module(jnp.arange(self.num_embeddings))
        chunks = self.weight_generator(embedding)
        check_chunks(chunks, self.num_embeddings, self.weight_chunk_dim, self.embedding_dim)
        return self.start_values_map(chunks.reshape(-1)), {"embedding": embedding}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` fits :attr:`layout`."""
        check_generated_params(generated_params, self.layout)

    # ------------------------------------------------------------ the target's variables

    def _initial_variables(self, args: Tuple, kwargs: Mapping) -> Mapping:
        """The model's own initial variables: the given tree, or a fresh ``init``."""
        given = self.hypernn_options().variables
        if given is not None:
            return given
        rngs = {name: self.make_rng(name) for name in self.scope.rngs}
        return self.hypernn_target().init(rngs, *args, **kwargs)

    def _kept_params(self, initial: Optional[Mapping]) -> Optional[Any]:
        plan = self.plan
        if not plan.kept:
            return None

        def init_kept() -> Dict[str, Any]:
            tree: Dict[str, Any] = {}
            for path in plan.kept:
                set_path(tree, path, _pick(initial["params"], path))
            return tree

        return self.variable("params", "target_network", init_kept)

    def _collections(self, initial: Optional[Mapping]) -> Dict[str, Dict[str, Any]]:
        return {
            collection: {key: self.variable(collection, key, lambda c=collection, k=key: initial[c][k]) for key in keys}
            for collection, keys in self.plan.structure.collections
        }

    def _target_params(self, generated_params: jax.Array, kept: Any) -> Dict[str, Any]:
        return self._params_tree(self.target_tensors(generated_params), kept)

    def target_tensors(self, generated_params: jax.Array) -> Dict[str, jax.Array]:
        """The generated tensors by their names in the model (low-rank kernels merged:
        ``W0 + scale * (A @ B).T``); leading (per-sample) dims kept."""
        tensors = unflatten(generated_params, self.layout)
        if not self.plan.low_rank_weights:
            return tensors
        bases = self.get_variable(COLLECTION, "low_rank_bases")
        return merge_low_rank(tensors, self.plan.low_rank_weights, bases, self.hypernn_options().low_rank_scale)

    def _low_rank_bases(self, initial: Optional[Mapping]) -> None:
        """Keep each adapted kernel's ``W0`` (from the model's initial variables) frozen."""
        if not self.plan.low_rank_weights:
            return
        paths = dict(self.plan.slots)
        self.variable(COLLECTION, "low_rank_bases",
                      lambda: {w.name: _pick(initial["params"], paths[w.name]) for w in self.plan.low_rank_weights})  # fmt: skip

    def _params_tree(self, tensors: Mapping[str, jax.Array], kept: Any) -> Dict[str, Any]:
        """The model's ``params``: the unselected ``kept`` tree with ``tensors`` at their paths."""
        tree = _deep_copy_dicts(kept) if kept is not None else {}
        for name, path in self.plan.slots:
            set_path(tree, path, tensors[name])
        return tree

    def generated_variables(self, **generate_params_kwargs: Any) -> Dict[str, Any]:
        """The ``params`` collection for the original module: generated and unselected leaves.

        Use as ``hnet.apply(variables, method=hnet.generated_variables)``.
        """
        flat, _ = self.generate_params(**generate_params_kwargs)
        kept = self.get_variable("params", "target_network")
        return self._target_params(flat, kept)

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Apply the model with ``generated_params`` in place of the selected params."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        call = self._target_call(args, kwargs)
        tensors, factors = split_generated(self, generated_params)  # factored Dense kernels: W0 + their factors
        variables = {"params": self._params_tree({**tensors, **frozen_kernels(self, factors)}, call.kept), **call.state}
        with factored_dense(self.plan, factors):
            result = self.hypernn_target().apply(variables, *args, rngs=call.rngs, mutable=call.mutable, **kwargs)
        if not call.mutable:
            return result
        output, updates = result
        self._write_back(call, updates)
        return output

    def _target_call(self, args: Tuple, kwargs: Mapping) -> "TargetCall":
        """What the model's ``apply`` needs besides the generated params (creating the
        variables when initialising)."""
        initial = self._initial_variables(args, kwargs) if self.is_initializing() else None
        self._low_rank_bases(initial)
        kept = self._kept_params(initial)
        collections = self._collections(initial)
        state = {c: {k: v.value for k, v in keyed.items()} for c, keyed in collections.items()}
        # Every collection the caller made mutable but params (whose leaves are given): also
        # those the model only creates while running (sown ``intermediates``, a ``cache``).
        mutable = subtract_filters(self.scope.mutable, "params")
        mutable = False if is_filter_empty(mutable) else mutable
        rngs = {name: self.make_rng(name) for name in self.scope.rngs if name != "params"}
        return TargetCall(kept.value if kept is not None else None, collections, state, mutable, rngs)

    def _write_back(self, call: "TargetCall", updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the collections the model's ``apply`` returned as this module's variables
        (while initialising, the model's own initial state stays, as ``model.init`` leaves it)."""
        for collection, keyed in updates.items():
            for key, value in keyed.items():
                if collection in call.collections and key in call.collections[collection]:
                    if not self.is_initializing():
                        call.collections[collection][key].value = value
                else:
                    self.put_variable(collection, key, value)

    @nn.compact
    def __call__(
        self,
        *args: Any,
        generated_params: Optional[jax.Array] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Generate the weights (unless ``generated_params`` is given) and apply the model.

        Returns the model's output, or ``(output, generated_params, aux)`` with
        ``has_aux=True`` (``aux`` is ``{}`` when ``generated_params`` was given).
        """
        return call_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                 assert_parameter_shapes=assert_parameter_shapes,
                                 generate_params_kwargs=generate_params_kwargs)  # fmt: skip


#: id(options) -> {model and argument shapes: plan}; an entry lives as long as its options
_PLANS: Dict[int, Dict[Any, LinenPlan]] = {}


def _plan_cache(options: HypernetizeOptions) -> Dict[Any, LinenPlan]:
    key = id(options)
    if key not in _PLANS:
        _PLANS[key] = {}
        weakref.finalize(options, _PLANS.pop, key, None)
    return _PLANS[key]


def _method_name(method: Any) -> Any:
    """Bound methods of an unplanned instance become names, so the planned clone runs them."""
    return getattr(method, "__name__", method) if inspect.ismethod(method) else method


@dataclasses.dataclass(frozen=True)
class _Value:
    """A name and a value, shaped like a :class:`~hypernn.specs.ParamSpec` for :func:`start_values`."""

    name: str
    value: Any


def _deep_copy_dicts(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _deep_copy_dicts(v) for k, v in tree.items()}
    return tree


def _checked(module: Any, argument: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise OptionTypeError(f"`{argument}` must return a flax.linen.Module; it returned {type(module).__name__}.")
    return module


class HypernetizedLinen(LinenHypernetwork):
    """A hypernetwork for a given linen module instance (what :func:`hypernetize` returns).

    Attributes:
        target: the model (held opaquely so linen does not adopt it as a submodule).
        options: the validated :class:`~hypernn.options.HypernetizeOptions`.
    """

    target: Opaque = None
    options: Opaque = None

    def hypernn_target(self) -> nn.Module:
        return self.target.value

    def hypernn_options(self) -> HypernetizeOptions:
        return self.options.value
