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
import itertools
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
from ...layout import Layout, plan_layout
from ...options import HypernetizeOptions
from ...selection import Selection, Selector, select
from ...specs import ParamSpec
from . import factories
from .reuse import GeneratedWeightsCache, can_reuse
from .swap import ParameterSlots
from .introspect import copy_without, param_specs, refresh_derived_state, remove_parameters, untrack_generated_weights

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
    ):
        super().__init__()
        options = HypernetizeOptions(
            embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk_dim, layout=layout,
            targets=targets, exclude=exclude, embedding_factory=embedding_factory,
            generator_factory=generator_factory, inplace=inplace,
        )  # fmt: skip
        self._build(model, options)

    # ------------------------------------------------------------ construction

    def _build(self, model: nn.Module, options: HypernetizeOptions) -> None:
        _check_model(model)
        self._check_forward_arguments(model, options)
        chosen, self.layout = self._plan(model, options)
        self.selection = Selection(tuple(s.without_value() for s in chosen), type(model).__name__)
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
        self._probe()
        # Everything that can fail on user input has run: now the model (or its copy) changes.
        target = model if options.inplace else copy_without(model, chosen)
        self._stateful_owners = remove_parameters(target, [n for s in chosen for n in s.names])
        self.target_network = target

    def _plan(self, model: nn.Module, options: HypernetizeOptions) -> Tuple[List[ParamSpec], Layout]:
        """The tensors to generate and their layout (a hook for subclasses)."""
        chosen = select(param_specs(model), targets=options.targets, exclude=options.exclude,
                        model_name=type(model).__name__).chosen  # fmt: skip
        layout = plan_layout(chosen, kind=options.layout, num_embeddings=options.num_embeddings,
                             chunk_dim=options.chunk_dim)  # fmt: skip
        return list(chosen), layout

    @property
    def _target(self) -> nn.Module:
        # Read through ``_modules``: subclasses (the hyper-nn API) give ``target_network`` its old meaning.
        return self._modules["target_network"]

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

    def _probe(self) -> None:
        """Run the new modules once (eval mode, no grad) to check their output shapes."""
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
        return chunks.reshape(-1), {"embedding": embedding}

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

    def generated_state_dict(self, **generate_params_kwargs: Any) -> Dict[str, torch.Tensor]:
        """The generated tensors, detached, by their names in the original model.

        Ready for ``model.load_state_dict(hnet.generated_state_dict(), strict=False)``.
        """
        flat, _ = self.generate_params(**generate_params_kwargs)
        return {name: tensor.detach() for name, tensor in self.unflatten(flat).items()}

    # ------------------------------------------------------------ running

    def target_forward(
        self, *args: Any, generated_params: torch.Tensor, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the target network with ``generated_params`` in place of the selected tensors."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        return self._run_with_tensors(self.unflatten(generated_params), args, kwargs)

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
            generated_params, aux, tensors = self._generated_cache().get(*self._generating_tensors(), self._generate_all)
            if type(self).target_forward is HypernetizedModule.target_forward:
                output = self._run_with_tensors(tensors, args, kwargs)  # the cut tensors are reused too
            else:
                output = self.target_forward(*args, generated_params=generated_params, assert_parameter_shapes=False,
                                             **kwargs)  # fmt: skip
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

    def _generating_tensors(self) -> Tuple[Iterator[torch.Tensor], Iterator[torch.Tensor]]:
        """``(parameters, buffers)`` generation may read: all but the target's."""
        modules = [module for name, module in self._modules.items() if name != "target_network" and module is not None]
        parameters = itertools.chain((p for p in self._parameters.values() if p is not None),
                                     *(m.parameters() for m in modules))  # fmt: skip
        buffers = itertools.chain((b for b in self._buffers.values() if b is not None), *(m.buffers() for m in modules))
        return parameters, buffers

    def _generate_all(self) -> Tuple[torch.Tensor, Dict[str, Any], Dict[str, torch.Tensor]]:
        """``(flat, aux, tensors by name)``: what a reused call needs."""
        flat, aux = self.generate_params()
        return flat, aux, self.unflatten(flat)

    def _generated_cache(self) -> GeneratedWeightsCache:
        cache = self.__dict__.get("_generated_weights_cache")
        if cache is None:
            cache = self.__dict__["_generated_weights_cache"] = GeneratedWeightsCache()
        return cache

    def clear_generated_cache(self) -> None:
        """Forget reused generated weights (needed only after edits through ``param.data``)."""
        self._generated_cache().clear()

    # ------------------------------------------------------------ the inverse

    def materialize(self, **generate_params_kwargs: Any) -> nn.Module:
        """A plain copy of the model with the generated weights baked in as parameters.

        The inverse of hypernetization (like PEFT's ``merge_and_unload``): the result is an
        instance of the original model class, independent of this hypernetwork.
        """
        model = copy_without(self._target, [])
        generated = self.generated_state_dict(**generate_params_kwargs)
        for slot in self.layout.slots:
            parameter = nn.Parameter(generated[slot.name].clone())
            for name in (slot.name,) + slot.aliases:
                owner_name, _, attribute = name.rpartition(".")
                model.get_submodule(owner_name).register_parameter(attribute, parameter)
        for owner_name in self._stateful_owners:
            untrack_generated_weights(model.get_submodule(owner_name))
        refresh_derived_state(model, self._stateful_owners)
        return model

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
        return (
            f"layout={layout.kind!r}, num_embeddings={layout.num_chunks}, embedding_dim={self.embedding_dim}, "
            f"chunk_dim={layout.chunk_dim}, generated {layout.num_params} values ({layout.unused} unused) "
            f"for [{shown}]"
        )
