"""Dynamic torch hypernetworks: weights generated from a condition, per sample, batched.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> hnet = DynamicHypernetizedModule(model, embedding_dim=3, num_embeddings=4, condition_dim=5)
    >>> x, c = torch.randn(6, 4), torch.randn(6, 5)
    >>> hnet(x, condition=c).shape            # weight set i for sample i
    torch.Size([6, 2])
    >>> hnet(x, condition=c[0]).shape         # one weight set for the whole batch
    torch.Size([6, 2])
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ...errors import (
    ConditionError,
    ConditionTypeError,
    ConfigurationError,
    GeneratedParamsError,
)
from ...options import HypernetizeOptions
from . import conditioning
from ...calling import call_arguments, check_condition_keyword, check_conditioning_kwargs, check_reserved, route_condition
from ...diagnostics import HypernetworkSummary
from .module import HypernetizedModule
from .per_sample import PerSampleRunner

__all__ = ["DynamicHypernetizedModule"]


class DynamicHypernetizedModule(HypernetizedModule):
    """A hypernetwork whose generated weights depend on a condition, per sample.

    ``hnet(x, condition=c)``: ``c`` of shape ``(B, C)`` generates weight set ``i`` for sample
    ``i`` (output ``i`` equals the model run with weight set ``i`` on ``x[i:i+1]``); ``c`` of
    shape ``(C,)`` generates one weight set for the whole batch. With ``num_conditions=T``,
    ``c`` holds integer ids (shape ``(B,)`` or ``()``) of learned condition embeddings.

    Per-sample weights run without a Python loop over samples (see
    :mod:`hypernn.transform.torch.per_sample`). BatchNorm layers with generated affine
    parameters act as conditional batch norm (whole-batch statistics, per-sample scale and
    shift).

    Args: those of :class:`HypernetizedModule`, plus ``condition_dim``, ``num_conditions``,
    ``condition_factory`` and ``condition_keyword`` (see :func:`hypernn.hypernetize`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        condition_dim: Optional[int] = None,
        num_conditions: Optional[int] = None,
        condition_factory: Any = None,
        condition_keyword: bool = True,
        **options: Any,
    ):
        nn.Module.__init__(self)
        built = HypernetizeOptions(condition_dim=condition_dim, num_conditions=num_conditions,
                                   condition_factory=condition_factory, condition_keyword=condition_keyword,
                                   **options)  # fmt: skip
        if not built.dynamic:
            raise ConfigurationError("a dynamic hypernetwork needs `condition_dim=` or `num_conditions=`.")
        self.condition_keyword = condition_keyword
        self._build(model, built)
        names = self.target_tensor_names()
        self._runner = PerSampleRunner(self._target, list(names), names)

    # ------------------------------------------------------------ construction

    def _check_forward_arguments(self, model: nn.Module, options: HypernetizeOptions) -> None:
        check_condition_keyword(model.forward, f"{type(model).__name__}.forward", options.condition_keyword)
        check_reserved(model.forward, f"{type(model).__name__}.forward")

    def _build_extra_modules(self, options: HypernetizeOptions, placement: Dict[str, Any]) -> None:
        self.condition_dim = options.condition_dim or options.embedding_dim
        self.num_conditions = options.num_conditions
        if self.num_conditions is not None:
            self.condition_embedding = nn.Embedding(self.num_conditions, self.condition_dim).to(**placement)
        factory = conditioning.resolve(options.condition_factory)
        module = factory(self.condition_dim, self.num_embeddings, self.embedding_dim)
        self.condition_module = self._checked_module(module, "condition_factory").to(**placement)
        self.generator_input_dim = getattr(self.condition_module, "output_dim", self.embedding_dim)

    def _zero_condition(self, *lead: int) -> torch.Tensor:
        """Zero condition vectors ``(*lead, condition_dim)`` in the embeddings' dtype."""
        dtype = self.embedding_module.weight.dtype if hasattr(self.embedding_module, "weight") else None
        return torch.zeros(*lead, self.condition_dim, device=self.device, dtype=dtype)

    def _probe_chunks(self) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        condition = self._zero_condition(1)
        embedding, _ = self.condition_module(self.embedding_module(self._embedding_index), condition)
        return self.weight_generator(embedding), (1,)

    # ------------------------------------------------------------ conditions

    def _condition_vectors(self, condition: Any) -> torch.Tensor:
        """``(C,)`` or ``(B, C)`` condition vectors from what the caller passed."""
        if condition is None:
            raise ConditionError(
                "a dynamic hypernetwork needs a condition: call `hnet(x, condition=c)` (or pass "
                "`generate_params_kwargs={'condition': c}`)."
            )
        if self.num_conditions is not None:
            ids = torch.as_tensor(condition, device=self.device)
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ConditionTypeError(f"`condition` must hold integer ids (num_conditions={self.num_conditions}); got dtype {ids.dtype}.")
            if ids.dim() > 1:
                raise ConditionError(f"`condition` ids must have shape () or (B,); got {tuple(ids.shape)}.")
            if not torch.compiler.is_compiling() and ids.numel() and (ids.min() < 0 or ids.max() >= self.num_conditions):
                raise ConditionError(f"`condition` ids must lie in [0, {self.num_conditions}); got values from {int(ids.min())} to {int(ids.max())}.")
            return self.condition_embedding(ids)
        if not isinstance(condition, torch.Tensor) or not condition.is_floating_point():
            given = condition.dtype if isinstance(condition, torch.Tensor) else type(condition).__name__
            raise ConditionTypeError(f"`condition` must be a floating-point tensor of width condition_dim={self.condition_dim}; got {given}.")
        if condition.dim() not in (1, 2) or condition.shape[-1] != self.condition_dim:
            raise ConditionError(
                f"`condition` must have shape ({self.condition_dim},) for one weight set or (B, {self.condition_dim}) "
                f"for one per sample; got {tuple(condition.shape)}."
            )
        return condition

    def _condition_arguments(self) -> frozenset:
        """Extra keywords the conditioning module takes (read once per module object)."""
        module = self.condition_module
        cached = self.__dict__.get("_condition_arguments_cache")
        if cached is None or cached[0] is not module:
            cached = (module, frozenset(call_arguments(module.forward)) - {"embedding", "condition"})
            self.__dict__["_condition_arguments_cache"] = cached
        return cached[1]

    def generate_params(self, condition: Any = None, **kwargs: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Generate ``(flat, aux)``: ``flat`` is ``(generated_size,)`` for one condition or
        ``(B, generated_size)`` for a batch; ``aux`` holds the conditioned ``"embedding"`` and
        whatever the conditioning module adds (e.g. ``"hidden_state"``)."""
        check_conditioning_kwargs(self._condition_arguments(), type(self.condition_module).__name__, kwargs)
        vectors = self._condition_vectors(condition)
        embedding, aux = self.condition_module(self.embedding_module(self._embedding_index), vectors, **kwargs)
        chunks = self.weight_generator(embedding)
        lead = tuple(vectors.shape[:-1])
        self._check_chunks(chunks, lead)
        return self.start_map(chunks.reshape(*lead, -1)), {"embedding": embedding, **aux}

    # ------------------------------------------------------------ running

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Like the static check, but a ``(B, n)`` batch of vectors is valid too."""
        if isinstance(generated_params, torch.Tensor) and generated_params.dim() == 2:
            super().assert_parameter_shapes(generated_params[0])
            return
        if isinstance(generated_params, torch.Tensor) and generated_params.dim() != 1:
            raise GeneratedParamsError(
                f"`generated_params` must be a vector (one weight set) or a (B, n) batch of vectors (one per sample); "
                f"got shape {tuple(generated_params.shape)}."
            )
        super().assert_parameter_shapes(generated_params)

    def target_forward(
        self, *args: Any, generated_params: torch.Tensor, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the model with one weight set (a vector) or one per sample (``(B, n)``)."""
        if generated_params.dim() == 1:
            return super().target_forward(*args, generated_params=generated_params,
                                          assert_parameter_shapes=assert_parameter_shapes, **kwargs)  # fmt: skip
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        tensors = self.target_tensors(generated_params)
        return self._runner(self._target, tensors, generated_params.shape[0], args, kwargs)

    def forward(
        self,
        *args: Any,
        condition: Any = None,
        generated_params: Optional[torch.Tensor] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """``hnet(x, condition=c)``; the other keywords as for a static hypernetwork."""
        generate_kwargs = route_condition(condition, generate_params_kwargs, kwargs, self.condition_keyword)
        return super().forward(*args, generated_params=generated_params, has_aux=has_aux,
                               assert_parameter_shapes=assert_parameter_shapes,
                               generate_params_kwargs=generate_kwargs, **kwargs)  # fmt: skip

    def materialize(self, **generate_params_kwargs: Any) -> nn.Module:
        """The model with the weights of one condition baked in (``condition=`` of shape
        ``(C,)``, or an integer id); a batch of conditions is refused (materialize each)."""
        flat, _ = self.generate_params(**generate_params_kwargs)
        if flat.dim() != 1:
            raise ConditionError(
                f"materialize needs one condition (shape ({self.condition_dim},) or one id), not a batch: got "
                f"weights of shape {tuple(flat.shape)}; materialize each: "
                f"`[hypernn.materialize(hnet, condition=c) for c in conditions]`."
            )
        return self._baked({name: t.detach() for name, t in self.merged_tensors(flat).items()})

    def summary(self, **generate_params_kwargs: Any) -> HypernetworkSummary:
        """Like the static summary, for one condition (default: the zero condition, or id 0)."""
        note = ""
        if generate_params_kwargs.get("condition") is None:
            generate_params_kwargs["condition"] = 0 if self.num_conditions is not None else self._zero_condition()
            note = ", at condition id 0" if self.num_conditions is not None else ", at the zero condition"
        with torch.no_grad():
            flat, _ = self.generate_params(**generate_params_kwargs)
        if flat.dim() != 1:
            raise ConditionError("summary takes one condition (shape (C,) or one id), not a batch.")
        return self._summary(flat, note)

