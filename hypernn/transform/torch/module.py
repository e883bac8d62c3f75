"""The torch hypernetwork: a drop-in ``nn.Module`` whose selected weights are generated.

    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> hnet = HypernetizedModule(model, embedding_dim=3, num_embeddings=4)
    >>> hnet(torch.randn(5, 4)).shape
    torch.Size([5, 2])
    >>> sorted(name for name, _ in hnet.named_parameters())
    ['embedding_module.weight', 'weight_generator.bias', 'weight_generator.weight']
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from ...errors import (
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    UnsupportedModelError,
)
from ...calling import RESERVED_KEYWORDS, call_hypernetwork, check_reserved, reject_generate_kwargs
from ...checkpoint import check_checkpoint, strip_wrapper_prefixes
from ...init import common_scale
from ...layout import Layout, plan_layout
from ...lowrank import LowRankWeight, factor_entries, select_low_rank
from ...options import HypernetizeOptions
from ...selection import Selection, Selector, select
from ...specs import ParamSpec
from ...diagnostics import HypernetworkSummary, summarize
from ...targets import slot_targets, start_targets, start_values
from . import factories
from .reuse import GeneratedWeightsCache, can_reuse
from .swap import Binding, FilledSlots, ParameterSlots
from .introspect import copy_without, param_specs, refresh_derived_state, remove_parameters, untrack_generated_weights
from .low_rank import Adapted, add_low_rank_slots, compose, merged_weight, remove_low_rank_slots
from .start import build_output_affine, fold_common_scale, measure, numpy_of

__all__ = ["RESERVED_KEYWORDS", "HypernetizedModule"]



def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"`model` must be a torch.nn.Module; got {type(model).__name__} ({model!r:.80}).")


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode; restore every submodule's own flag afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


class HypernetizedModule(nn.Module):
    """A hypernetwork that generates the selected parameters of a torch model.

    The forward runs ``embedding_module(arange(num_embeddings))`` through
    ``weight_generator`` to a ``(num_embeddings, chunk_dim)`` tensor, cuts it into the
    selected tensors by :attr:`layout`, and calls the model with them through
    :func:`torch.func.functional_call`. ``hnet(*args, **kwargs)`` takes what the model takes
    and returns what it returns.

    What is shared with the given model: nothing, unless ``inplace=True``; then the model
    object itself becomes :attr:`target_network` and loses the selected parameters.

    Attributes:
        target_network: the model without the selected parameters; its buffers and other
            parameters stay registered (``state_dict``, ``.to()``, ``.train()`` reach them).
        embedding_module, weight_generator: the hypernetwork's own modules.
        layout: where each generated tensor lives (:class:`hypernn.layout.Layout`).
        selection: the generated tensors (names, shapes, sizes), for reports.

    Args: see :func:`hypernn.hypernetize`. Subclasses may override
    :meth:`make_embedding_module`, :meth:`make_weight_generator` and :meth:`generate_params`.
    """

    layout: Layout
    selection: Selection

    def __init__(
        self,
        model: nn.Module,
        *,
        embedding_dim: int,
        num_embeddings: Optional[int] = None,
        chunk_dim: Optional[int] = None,
        layout: str = "global",
        targets: Selector = None,
        exclude: Selector = None,
        embedding_factory: Optional[Callable[[int, int], nn.Module]] = None,
        generator_factory: Optional[Callable[[int, int], nn.Module]] = None,
        inplace: bool = False,
        init: str = "hyperfan",
        warm_start: Optional[bool] = None,
        low_rank: Optional[int] = None,
        low_rank_scale: float = 1.0,
    ):
        super().__init__()
        options = HypernetizeOptions(
            embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk_dim, layout=layout,
            targets=targets, exclude=exclude, embedding_factory=embedding_factory,
            generator_factory=generator_factory, inplace=inplace, init=init, warm_start=warm_start,
            low_rank=low_rank, low_rank_scale=low_rank_scale,
        )  # fmt: skip
        self._build(model, options)

    # ------------------------------------------------------------ construction

    def _build(self, model: nn.Module, options: HypernetizeOptions) -> None:
        _check_model(model)
        self._check_forward_arguments(model, options)
        self.low_rank_weights: Tuple[LowRankWeight, ...] = ()
        chosen, self.layout = self._plan(model, options)
        specs = param_specs(model)
        self.selection = Selection(tuple(s.without_value() for s in chosen), type(model).__name__)
        self.init_scheme, self.warm_start = options.init, options.starts_at_model
        self.low_rank, self.low_rank_scale = options.low_rank, float(options.low_rank_scale)
        self.target_inits = slot_targets(specs, chosen, self.low_rank_weights, convention="torch", measure=measure)
        self.num_model_parameters = sum(s.size for s in specs if s.kind == "parameter")
        self.embedding_dim = self.generator_input_dim = options.embedding_dim
        self.num_embeddings = self.layout.num_chunks
        self.weight_chunk_dim = self.layout.chunk_dim
        self._factories = (factories.resolve(options.embedding_factory) or factories.default_embedding,
                           factories.resolve(options.generator_factory) or factories.default_generator)  # fmt: skip
        reference = chosen[0].value if chosen else None  # none: a subclass planned an empty layout
        placement = dict(device=reference.device, dtype=reference.dtype) if reference is not None else {}
        self.embedding_module = self._checked_module(self.make_embedding_module(), "embedding_factory").to(**placement)
        self._build_extra_modules(options, placement)
        self.weight_generator = self._checked_module(self.make_weight_generator(), "generator_factory").to(**placement)
        self.register_buffer("_embedding_index", torch.arange(self.num_embeddings, device=placement.get("device")), persistent=False)
        del self._factories  # may hold lambdas; not needed after construction
        raw = self._probe()
        self.start_targets = self.target_inits
        self.output_affine = self._start_map(options, chosen, raw)
        # Everything that can fail on user input has run: now the model (or its copy) changes.
        replaced = [] if options.low_rank else chosen
        target = model if options.inplace else copy_without(model, replaced)
        self._stateful_owners = remove_parameters(target, [n for s in replaced for n in s.names])
        self._adapted = self._adapt(target)
        self.target_network = target

    def _start_map(self, options: HypernetizeOptions, chosen: List[ParamSpec], raw: Optional[torch.Tensor]) -> Any:
        """Hyperfan: fold the common scale into the generator, then plan the per-tensor map
        (:mod:`hypernn.init`); warm start: its base. ``None`` when nothing changes."""
        if (options.init == "default" and not self.warm_start) or raw is None:  # raw: None if a subclass skips the probe
            return None
        if options.init == "hyperfan" and not raw.is_meta:  # the common part of the scales goes into the generator
            factor = common_scale(self.layout, numpy_of(raw), self.target_inits)
            raw = fold_common_scale(self.weight_generator, self.weight_chunk_dim, factor, raw, self._probe)
        start = start_values(chosen, self.low_rank_weights) if self.warm_start else None
        if start and not raw.is_meta:
            values = {name: numpy_of(torch.as_tensor(value)) for name, value in start.items()}
            self.start_targets = start_targets(self.layout, self.target_inits, values, low_rank=bool(self.low_rank_weights))
        return build_output_affine(self.layout, raw.reshape(-1), self.target_inits, init=options.init, start=start)

    def _plan(self, model: nn.Module, options: HypernetizeOptions) -> Tuple[List[ParamSpec], Layout]:
        """The tensors to generate and their layout (a hook for subclasses); with
        ``low_rank`` the layout holds their factors (:attr:`low_rank_weights`)."""
        chosen = self._select(param_specs(model), options, type(model).__name__)
        entries = factor_entries(self.low_rank_weights) if options.low_rank else chosen
        layout = plan_layout(entries, kind=options.layout, num_embeddings=options.num_embeddings,
                             chunk_dim=options.chunk_dim)  # fmt: skip
        return list(chosen), layout

    @property
    def _target(self) -> nn.Module:
        # Read through ``_modules``: subclasses (the hyper-nn API) give ``target_network`` its old meaning.
        return self._modules["target_network"]

    def _select(self, specs: List[ParamSpec], options: HypernetizeOptions, model_name: str) -> Tuple[ParamSpec, ...]:
        """The selected tensors; with ``low_rank`` also plans :attr:`low_rank_weights`."""
        self.low_rank_weights: Tuple[LowRankWeight, ...] = ()
        if not options.low_rank:
            return select(specs, targets=options.targets, exclude=options.exclude, model_name=model_name).chosen
        selection, self.low_rank_weights = select_low_rank(
            specs, targets=options.targets, exclude=options.exclude, rank=options.low_rank, convention="torch",
            model_name=model_name,
        )  # fmt: skip
        return selection.chosen

    def _adapt(self, target: nn.Module) -> Tuple[Adapted, ...]:
        """Freeze each low-rank ``W0``; an ``nn.Linear`` called normally gets factor slots."""
        adapted = []
        chains = {s.name: s.module_chains[0] for s in self.selection.chosen}
        for weight in self.low_rank_weights:
            owner_name = weight.name.rpartition(".")[0]
            owner = target.get_submodule(owner_name)
            target.get_parameter(weight.name).requires_grad_(False)
            inside_attention = any(issubclass(t, nn.MultiheadAttention) for _, t in chains[weight.name])
            factored = type(owner).forward is nn.Linear.forward and not weight.aliases and not inside_attention
            if factored:
                add_low_rank_slots(owner)
            adapted.append(Adapted(weight, owner_name, factored))
        return tuple(adapted)

    def _check_forward_arguments(self, model: nn.Module, options: HypernetizeOptions) -> None:
        check_reserved(model.forward, f"{type(model).__name__}.forward")

    def _build_extra_modules(self, options: HypernetizeOptions, placement: Dict[str, Any]) -> None:
        """Hook for subclasses: modules built between the embedding and the generator."""

    def make_embedding_module(self) -> nn.Module:
        """Build the chunk embedding module; override in subclasses to customise."""
        return self._factories[0](self.num_embeddings, self.embedding_dim)

    def make_weight_generator(self) -> nn.Module:
        """Build the weight generator; override in subclasses to customise."""
        return self._factories[1](self.generator_input_dim, self.weight_chunk_dim)

    @staticmethod
    def _checked_module(module: Any, argument: str) -> nn.Module:
        if not isinstance(module, nn.Module):
            raise OptionTypeError(f"`{argument}` must return a torch.nn.Module; it returned {type(module).__name__}.")
        return module

    def _probe(self) -> torch.Tensor:
        """Run the new modules once (eval mode, no grad) to check their output shapes;
        returns the raw output (which the hyperfan init measures)."""
        with torch.no_grad(), _eval_mode(self):
            try:
                chunks, lead = self._probe_chunks()
            except Exception as err:
                raise GeneratorOutputError(
                    f"running the embedding module and weight generator on arange({self.num_embeddings}) failed: "
                    f"{type(err).__name__}: {err}. The generator must map (num_embeddings, embedding_dim)="
                    f"({self.num_embeddings}, {self.generator_input_dim}) to ({self.num_embeddings}, {self.weight_chunk_dim})."
                ) from err
        self._check_chunks(chunks, lead)
        return chunks

    def _probe_chunks(self) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        return self.weight_generator(self.embedding_module(self._embedding_index)), ()

    def _check_chunks(self, chunks: torch.Tensor, lead: Tuple[int, ...] = ()) -> None:
        expected = tuple(lead) + (self.num_embeddings, self.weight_chunk_dim)
        if not isinstance(chunks, torch.Tensor) or tuple(chunks.shape) != expected:
            given = tuple(chunks.shape) if isinstance(chunks, torch.Tensor) else type(chunks).__name__
            raise GeneratorOutputError(
                f"the weight generator must output shape (num_embeddings, chunk_dim)={expected}; it gave {given}. "
                f"Build it with `generator_factory(embedding_dim={self.generator_input_dim}, chunk_dim={self.weight_chunk_dim})`."
            )

    # ------------------------------------------------------------ generating

    @property
    def device(self) -> torch.device:
        """The device the hypernetwork generates on."""
        return self._embedding_index.device

    @property
    def num_target_parameters(self) -> int:
        """Number of generated target values (tied tensors counted once)."""
        return self.layout.num_params

    def generate_params(self, **kwargs: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Generate the flat parameter vector: returns ``(flat, {"embedding": embedding})``.

        ``flat`` has ``num_embeddings * chunk_dim`` values (:attr:`Layout.generated_size`).
        """
        reject_generate_kwargs(type(self).__name__, kwargs)
        embedding = self.embedding_module(self._embedding_index)
        chunks = self.weight_generator(embedding)
        self._check_chunks(chunks)
        return self.start_map(chunks.reshape(-1)), {"embedding": embedding}

    def start_map(self, raw: torch.Tensor) -> torch.Tensor:
        """The fixed map from the generator's raw flat output to generated values
        (:attr:`output_affine`: hyperfan scale, warm start; identity with ``init="default"``)."""
        return raw if self.output_affine is None else self.output_affine(raw)

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` fits :attr:`layout`."""
        if not isinstance(generated_params, torch.Tensor):
            raise GeneratedParamsTypeError(f"`generated_params` must be a torch.Tensor; got {type(generated_params).__name__}.")
        if not generated_params.is_floating_point():
            raise GeneratedParamsTypeError(f"`generated_params` must be a floating-point tensor; got dtype {generated_params.dtype}.")
        if generated_params.dim() != 1:
            raise GeneratedParamsError(
                f"`generated_params` must be a 1-D vector; got shape {tuple(generated_params.shape)}. "
                f"Use torch.func.vmap over the hypernetwork for a batch of vectors."
            )
        self.layout.plan_for(generated_params.shape[-1])

    def unflatten(self, generated_params: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cut a flat vector into ``{name: tensor}`` (tied names share one tensor).

        Leading dimensions are kept: a ``(B, n)`` batch of vectors gives ``(B, *shape)``
        tensors.
        """
        plan = self.layout.plan_for(generated_params.shape[-1])
        pieces = torch.split(generated_params, plan.sizes, dim=-1)
        lead = tuple(generated_params.shape[:-1])
        tensors = {}
        for slot, index in zip(self.layout.slots, plan.keep):
            tensor = pieces[index].reshape(lead + slot.shape)
            tensors[slot.name] = tensor
            for alias in slot.aliases:
                tensors[alias] = tensor
        return tensors

    def target_tensors(self, generated_params: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What the target runs with: :meth:`unflatten`, then low-rank factors turned into
        weights or per-layer factors (:mod:`hypernn.transform.torch.low_rank`)."""
        tensors = self.unflatten(generated_params)
        return compose(self._target, tensors, self._adapted, self.low_rank_scale) if self._adapted else tensors

    def target_tensor_names(self) -> Dict[str, str]:
        """The names :meth:`target_tensors` gives, each mapped to its canonical name."""
        adapted = {name for item in self._adapted for name in item.weight.factor_names}
        names = {n: slot.name for slot in self.layout.slots if slot.name not in adapted for n in (slot.name,) + slot.aliases}
        for item in self._adapted:
            prefix = f"{item.owner}." if item.owner else ""
            weight = item.weight
            given = (prefix + "lora_A", prefix + "lora_B") if item.factored else (weight.name,) + weight.aliases
            names.update({n: n if item.factored else weight.name for n in given})
        return names

    def merged_tensors(self, generated_params: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The generated tensors by their names in the model, low-rank weights merged
        (``W0 + scale * A @ B``)."""
        tensors = self.unflatten(generated_params)
        for item in self._adapted:
            name_a, name_b = item.weight.factor_names
            w0 = self._target.get_parameter(item.weight.name)
            weight = merged_weight(w0, tensors.pop(name_a), tensors.pop(name_b), self.low_rank_scale)
            tensors.update({name: weight for name in (item.weight.name,) + item.weight.aliases})
        return tensors

    def generated_state_dict(self, **generate_params_kwargs: Any) -> Dict[str, torch.Tensor]:
        """The generated tensors, detached, by their names in the original model (low-rank
        weights merged).

        Ready for ``model.load_state_dict(hnet.generated_state_dict(), strict=False)``.
        """
        flat, _ = self.generate_params(**generate_params_kwargs)
        return {name: tensor.detach() for name, tensor in self.merged_tensors(flat).items()}

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: torch.Tensor, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the target network with ``generated_params`` in place of the selected tensors."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        return self._run_with_tensors(self.target_tensors(generated_params), args, kwargs)

    def _run_with_tensors(self, tensors: Mapping[str, torch.Tensor], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run the target with ``tensors`` (by name) in its selected parameter slots."""
        if not self._stateful_owners and not torch.compiler.is_compiling():
            with self._parameter_slots().filled(self._target, tensors):
                return self._target(*args, **kwargs)
        try:
            return functional_call(self._target, tensors, args, kwargs, tie_weights=False, strict=False)
        finally:
            if self._stateful_owners:
                refresh_derived_state(self._target, self._stateful_owners)

    def _parameter_slots(self) -> ParameterSlots:
        """Where the generated tensors go for a call (resolved once per target object)."""
        slots = self.__dict__.get("_slots")
        if slots is None:
            slots = self.__dict__["_slots"] = ParameterSlots()
        return slots

    def forward(
        self,
        *args: Any,
        generated_params: Optional[torch.Tensor] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Generate the weights (unless ``generated_params`` is given) and run the model.

        Returns the model's output, or ``(output, generated_params, aux)`` with
        ``has_aux=True`` (``aux`` is ``{}`` when ``generated_params`` was given).
        """
        if generated_params is None and not generate_params_kwargs and self._reuses_generated_weights():
            generated_params, aux, tensors, bindings = self._generated_cache().get(*self._generating_tensors(),
                                                                                   self._generate_all)  # fmt: skip
            if type(self).target_forward is not HypernetizedModule.target_forward:
                output = self.target_forward(*args, generated_params=generated_params, assert_parameter_shapes=False,
                                             **kwargs)  # fmt: skip
            elif bindings is not None:  # the cut tensors are reused too, and where they go
                with FilledSlots(bindings):
                    output = self._target(*args, **kwargs)
            else:
                output = self._run_with_tensors(tensors, args, kwargs)
            return (output, generated_params, aux) if has_aux else output
        return call_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                 assert_parameter_shapes=assert_parameter_shapes,
                                 generate_params_kwargs=generate_params_kwargs)  # fmt: skip

    # ------------------------------------------------------------ reusing generated weights

    #: reuse generated weights in eval mode without autograd (see :mod:`.reuse`)
    reuse_generated_weights: bool = True

    def _reuses_generated_weights(self) -> bool:
        # only the library's own generate_params is known to depend on nothing but tensors
        return (self.reuse_generated_weights and type(self).generate_params is HypernetizedModule.generate_params
                and can_reuse(self))  # fmt: skip

    def _generating_tensors(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """``(parameters, buffers)`` generation may read: all but the target's (except the
        frozen low-rank ``W0``, which merged weights read).

        Read straight from the modules' ``_parameters``/``_buffers``/``_modules`` (what
        ``parameters()``/``buffers()`` walk, without their name prefixes and tensor
        de-duplication, which a cache key does not need): this runs on every reused call."""
        parameters: List[torch.Tensor] = []
        buffers: List[torch.Tensor] = []
        stack: List[nn.Module] = [self]
        seen = set()
        while stack:
            module = stack.pop()
            if id(module) in seen:  # shared (or, pathologically, cyclic) submodules: once
                continue
            seen.add(id(module))
            parameters += [p for p in module._parameters.values() if p is not None]
            buffers += [b for b in module._buffers.values() if b is not None]
            children = module._modules
            if module is self:
                children = {name: child for name, child in children.items() if name != "target_network"}
            stack += [child for child in children.values() if child is not None]
        parameters += [self._target.get_parameter(item.weight.name) for item in self._adapted]
        return parameters, buffers

    def _generate_all(self) -> Tuple[torch.Tensor, Dict[str, Any], Dict[str, torch.Tensor], Optional[List[Binding]]]:
        """``(flat, aux, tensors by name, their slot bindings)``: what a reused call needs
        (low-rank weights composed; bindings ``None`` where the slots are not filled directly)."""
        flat, aux = self.generate_params()
        tensors = self.target_tensors(flat)
        bindings = None if self._stateful_owners else self._parameter_slots().bindings(self._target, tensors)
        return flat, aux, tensors, bindings

    def _generated_cache(self) -> GeneratedWeightsCache:
        cache = self.__dict__.get("_generated_weights_cache")
        if cache is None:
            cache = self.__dict__["_generated_weights_cache"] = GeneratedWeightsCache()
        return cache

    def clear_generated_cache(self) -> None:
        """Forget reused generated weights and the start map's per-element vectors (needed
        only after edits through ``param.data``)."""
        self._generated_cache().clear()
        if self.output_affine is not None:
            self.output_affine.clear_cache()

    # ------------------------------------------------------------ the inverse

    def materialize(self, **generate_params_kwargs: Any) -> nn.Module:
        """A plain copy of the model with the generated weights baked in as parameters.

        The inverse of hypernetization (like PEFT's ``merge_and_unload``): the result is an
        instance of the original model class, independent of this hypernetwork.
        """
        generated = self.generated_state_dict(**generate_params_kwargs)
        return self._baked(generated)

    def _baked(self, generated: Mapping[str, torch.Tensor]) -> nn.Module:
        """A copy of the target with ``generated`` (by model names) as its parameters."""
        model = copy_without(self._target, [])
        tensors = self.low_rank_weights or self.layout.slots
        for item in self._adapted:
            remove_low_rank_slots(model.get_submodule(item.owner))
        for tensor in tensors:
            parameter = nn.Parameter(generated[tensor.name].clone())
            for name in (tensor.name,) + tensor.aliases:
                owner_name, _, attribute = name.rpartition(".")
                owner = model.get_submodule(owner_name)
                owner._parameters.pop(attribute, None)
                owner.register_parameter(attribute, parameter)
        for owner_name in self._stateful_owners:
            untrack_generated_weights(model.get_submodule(owner_name))
        refresh_derived_state(model, self._stateful_owners)
        return model

    # ------------------------------------------------------------ diagnostics

    def summary(self, **generate_params_kwargs: Any) -> HypernetworkSummary:
        """Per generated tensor: name, shape, chunks, generated mean/std now vs the target
        layer's own init; totals: model parameters, trainable hypernetwork parameters,
        compression ratio. ``print(hnet.summary())`` shows a table."""
        with torch.no_grad():
            flat, _ = self.generate_params(**generate_params_kwargs)
        return self._summary(flat, "")

    def _summary(self, flat: torch.Tensor, note: str) -> HypernetworkSummary:
        settings = f"init={self.init_scheme!r}, warm_start={self.warm_start}"
        if self.low_rank:
            settings += f", low_rank={self.low_rank} (scale {self.low_rank_scale:g})"
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return summarize(
            self.layout, numpy_of(flat), self.start_targets, model_name=self.selection.model_name,
            target_params=self.num_model_parameters, hypernetwork_params=trainable, settings=settings + note,
            frozen_params=frozen, replaced_values=sum(w.size for w in self.low_rank_weights),
        )  # fmt: skip

    # ------------------------------------------------------------ checkpoints

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, checked first: a checkpoint of another model or
        selection raises :class:`~hypernn.errors.CheckpointMismatchError` naming every
        mismatch, and nothing is loaded. Keys saved from a ``torch.compile``d or
        DDP-wrapped hypernetwork (``_orig_mod.``, ``module.`` prefixes) are accepted.
        """
        own = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        prefix = strip_wrapper_prefixes(list(state_dict), list(own))
        if prefix:
            state_dict = {name[len(prefix):]: value for name, value in state_dict.items()}
        given = {name: tuple(getattr(v, "shape", ())) for name, v in state_dict.items()}
        check_checkpoint(own, given, owner=f"{self.selection.model_name} hypernetwork", strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------ niceties

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "target_network" or "target_network" not in self._modules:
                raise
            return getattr(self._modules["target_network"], name)

    def extra_repr(self) -> str:
        # The target's own repr shows generated parameters as absent (e.g. ``bias=False``),
        # so name them here.
        layout = self.layout
        names = [slot.name for slot in layout.slots]
        shown = ", ".join(names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")
        low_rank = f", low_rank={self.low_rank}" if self.low_rank else ""
        return (
            f"layout={layout.kind!r}, num_embeddings={layout.num_chunks}, embedding_dim={self.embedding_dim}, "
            f"chunk_dim={layout.chunk_dim}, init={self.init_scheme!r}, warm_start={self.warm_start}{low_rank}, "
            f"generated {layout.num_params} values ({layout.unused} unused) for [{shown}]"
        )
