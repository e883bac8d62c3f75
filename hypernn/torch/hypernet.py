"""hyper-nn's ``TorchHyperNetwork``, as a thin layer over :class:`hypernn.HypernetizedModule`.

    >>> import torch
    >>> from torch import nn
    >>> target = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    >>> hnet = TorchHyperNetwork.from_target(target, embedding_dim=4, num_embeddings=32)
    >>> hnet.num_target_parameters, hnet.weight_chunk_dim
    (4192, 131)
    >>> output, generated_params, aux = hnet(torch.zeros(1, 32), has_aux=True)
    >>> output.shape, generated_params.shape, aux["embedding"].shape
    (torch.Size([1, 32]), torch.Size([4192]), torch.Size([32, 4]))
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..base import HyperNetwork, check_generated_length, hypernetwork_sizes, run_hypernetwork
from ..errors import GeneratedParamsError, GeneratedParamsTypeError, GeneratorOutputError, OptionTypeError
from ..layout import Layout, plan_layout
from ..options import HypernetizeOptions
from ..specs import ParamSpec
from ..transform.torch.introspect import param_specs
from ..transform.torch.module import HypernetizedModule
from .utils import FunctionalParamVectorWrapper, _check_module, count_params

__all__ = ["FunctionalTargetNetwork", "TorchHyperNetwork", "create_functional_target_network"]

#: keys of hyper-nn 0.2 checkpoints that hypernn no longer has (its device-tracking dummies)
LEGACY_KEYS = ("__device_param_dummy__", "embedding_module.__device_param_dummy__")


def create_functional_target_network(target_network: nn.Module) -> FunctionalParamVectorWrapper:
    """hyper-nn's helper: ``FunctionalParamVectorWrapper(target_network)``."""
    return FunctionalParamVectorWrapper(target_network)


class FunctionalTargetNetwork:
    """``hnet.target_network``: the target as hyper-nn exposed it, called with a vector first.

    ``hnet.target_network(generated_params, *args, **kwargs)`` runs the target with those
    parameters (hyper-nn 0.2.1's attribute; 0.2.2 named it ``functional_target_network``).
    Other attributes are the target module's (``.module`` is the module itself, registered
    on the hypernetwork as ``target_network``).
    """

    def __init__(self, hypernetwork: "TorchHyperNetwork"):
        object.__setattr__(self, "_hypernetwork", hypernetwork)

    @property
    def module(self) -> nn.Module:
        return self._hypernetwork._target

    def __call__(self, generated_params: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self._hypernetwork._run_target(generated_params, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return f"FunctionalTargetNetwork({self.module!r})"


def _generates_by_default(cls: type) -> bool:
    """Whether ``cls.generate_params`` is one of hypernn's (not a user's override)."""
    return (getattr(cls.generate_params, "__module__", None) or "").startswith("hypernn.")


class TorchHyperNetwork(HypernetizedModule, HyperNetwork):
    """hyper-nn's torch hypernetwork (both API generations), on hypernn's torch backend.

    It generates every parameter of ``target_network`` as in hyper-nn: an
    ``nn.Embedding(num_embeddings, embedding_dim)`` and an
    ``nn.Linear(embedding_dim, weight_chunk_dim)`` produce ``num_embeddings`` chunks of
    ``weight_chunk_dim = ceil(num_target_parameters / num_embeddings)`` values, cut end to
    end into the target's parameters (``named_parameters`` order; the surplus of the last
    chunk is unused). Build it with :meth:`from_target`; customise it by passing
    ``custom_embedding_module``/``custom_weight_generator`` or by overriding
    :meth:`make_embedding_module`, :meth:`make_weight_generator` and
    :meth:`generate_params`.

    Differences from hyper-nn 0.2: the target's buffers (BatchNorm statistics) are
    registered (``state_dict``, ``.to()``, ``.train()``/``.eval()`` reach them); there is no
    device dummy parameter (plain DDP works); ``custom_weight_generator`` works; bad
    vectors raise :class:`~hypernn.errors.GeneratedParamsError` instead of a bare
    ``assert``; the target module is a deep copy, never the given object.

    Attributes:
        target_network: the target, callable as ``target_network(generated_params, *args)``
            (:class:`FunctionalTargetNetwork`); ``functional_target_network`` is the same.
        embedding_module, weight_generator: the hypernetwork's own modules.
        num_target_parameters, embedding_dim, num_embeddings, weight_chunk_dim: the sizes.
        target_weight_shapes: ``{name: torch.Size}`` of the generated parameters.
    """

    def __init__(
        self,
        target_network: nn.Module,
        num_target_parameters: Optional[int] = None,
        embedding_dim: int = 100,
        num_embeddings: int = 3,
        weight_chunk_dim: Optional[int] = None,
        custom_embedding_module: Optional[nn.Module] = None,
        custom_weight_generator: Optional[nn.Module] = None,
    ):
        nn.Module.__init__(self)
        _check_module(target_network, "target_network")
        for name, module in (("custom_embedding_module", custom_embedding_module),
                             ("custom_weight_generator", custom_weight_generator)):  # fmt: skip
            if module is not None and not isinstance(module, nn.Module):
                raise OptionTypeError(f"`{name}` must be a torch.nn.Module or None; got {type(module).__name__}.")
            self.__dict__[name] = module  # plain attributes: registered once, as embedding_module/weight_generator
        counted = sum(spec.size for spec in _generated_specs(target_network))
        if num_target_parameters is None:
            num_target_parameters = count_params(target_network)
        total, chunk = hypernetwork_sizes(counted=counted, num_target_parameters=num_target_parameters,
                                          num_embeddings=num_embeddings, weight_chunk_dim=weight_chunk_dim)  # fmt: skip
        self._num_target_parameters = total
        options = HypernetizeOptions(embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk or None)
        self._chunk = chunk
        self._build(target_network, options)

    # ------------------------------------------------------------ construction (hooks of the backend)

    def _plan(self, model: nn.Module, options: HypernetizeOptions) -> Tuple[List[ParamSpec], Layout]:
        """hyper-nn's layout: every floating-point parameter, end to end, in chunks of
        ``weight_chunk_dim`` (a parameter-free target gets an empty layout)."""
        chosen = _generated_specs(model)
        if not chosen:
            return [], Layout("global", (), options.num_embeddings, self._chunk)
        return chosen, plan_layout(chosen, kind="global", num_embeddings=options.num_embeddings, chunk_dim=self._chunk)

    def make_embedding_module(self) -> nn.Module:
        """``custom_embedding_module`` if given, else ``nn.Embedding(num_embeddings, embedding_dim)``."""
        custom = self.__dict__.get("custom_embedding_module")
        return custom if custom is not None else nn.Embedding(self.num_embeddings, self.embedding_dim)

    def make_weight_generator(self) -> nn.Module:
        """``custom_weight_generator`` if given, else ``nn.Linear(embedding_dim, weight_chunk_dim)``."""
        custom = self.__dict__.get("custom_weight_generator")
        return custom if custom is not None else nn.Linear(self.embedding_dim, self.weight_chunk_dim)

    def _probe(self) -> None:
        # An overridden generate_params decides itself how the modules fit together
        # (e.g. extra inputs concatenated to the embedding): nothing to probe then.
        if _generates_by_default(type(self)):
            super()._probe()

    def _check_chunks(self, chunks: torch.Tensor, lead: Tuple[int, ...] = ()) -> None:
        expected = tuple(lead) + (self.num_embeddings, self.weight_chunk_dim)
        if not isinstance(chunks, torch.Tensor) or tuple(chunks.shape) != expected:
            given = tuple(chunks.shape) if isinstance(chunks, torch.Tensor) else type(chunks).__name__
            raise GeneratorOutputError(
                f"the weight generator must map the embeddings to shape (num_embeddings, weight_chunk_dim)={expected}; "
                f"it gave {given}. A `custom_weight_generator` must take embedding_dim={self.embedding_dim} inputs "
                f"and give weight_chunk_dim={self.weight_chunk_dim} outputs."
            )

    # ------------------------------------------------------------ hyper-nn's attributes

    @property
    def num_target_parameters(self) -> int:
        """hyper-nn's parameter count: the values a generated vector holds at least."""
        return self._num_target_parameters

    @property
    def target_weight_shapes(self) -> Dict[str, torch.Size]:
        """``{name: torch.Size}`` of the generated parameters, in vector order."""
        return {slot.name: torch.Size(slot.shape) for slot in self.layout.slots}

    @property
    def target_network(self) -> FunctionalTargetNetwork:  # type: ignore[override]
        """The target, callable with a parameter vector first (see :class:`FunctionalTargetNetwork`)."""
        return FunctionalTargetNetwork(self)

    functional_target_network = target_network

    # ------------------------------------------------------------ generating and running

    def generate_params(self, *args: Any, **kwargs: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(flat vector of num_embeddings * weight_chunk_dim values, {"embedding": ...})``.

        Static: the arguments (the target's inputs, which ``forward`` passes on) do not
        change the weights.
        """
        embedding = self.embedding_module(self._embedding_index)
        chunks = self.weight_generator(embedding)
        self._check_chunks(chunks)
        return chunks.reshape(-1), {"embedding": embedding}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` is a floating-point vector of at
        least ``num_target_parameters`` values (hyper-nn: a bare ``assert``)."""
        self._check_vector(generated_params, max_dims=1)

    def _check_vector(self, generated_params: Any, max_dims: int) -> None:
        if not isinstance(generated_params, torch.Tensor):
            raise GeneratedParamsTypeError(f"`generated_params` must be a torch.Tensor; got {type(generated_params).__name__}.")
        if not generated_params.is_floating_point():
            raise GeneratedParamsTypeError(f"`generated_params` must be a floating-point tensor; got dtype {generated_params.dtype}.")
        if not 1 <= generated_params.dim() <= max_dims:
            batched = " or a (batch, n) batch of vectors" if max_dims == 2 else "; use torch.func.vmap for a batch of vectors"
            raise GeneratedParamsError(
                f"`generated_params` must be a vector{batched}; got shape {tuple(generated_params.shape)}."
            )
        check_generated_length(generated_params.shape[-1], self.num_target_parameters)

    def unflatten(self, generated_params: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{name: tensor}`` from the first values of a vector (hyper-nn ignores the rest)."""
        return super().unflatten(generated_params[..., : self.layout.num_params])

    def target_forward(
        self, *args: Any, generated_params: torch.Tensor, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Run the target network with ``generated_params``."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        return self._run_target(generated_params, args, kwargs)

    def _run_target(self, generated_params: torch.Tensor, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        # The backend's target_forward, past any override (``target_network(...)`` may be
        # called from a user's target_forward).
        return super(TorchHyperNetwork, self).target_forward(
            *args, generated_params=generated_params, assert_parameter_shapes=False, **kwargs
        )

    def forward(
        self,
        *args: Any,
        generated_params: Optional[torch.Tensor] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Generate the parameters (unless given) and run the target on ``args``/``kwargs``.

        ``generate_params`` receives the target's inputs when its signature takes them,
        and ``generate_params_kwargs`` (see :func:`hypernn.base.call_generate_params`).
        Returns the output, or ``(output, generated_params, aux)`` with ``has_aux=True``.
        """
        return run_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                assert_parameter_shapes=assert_parameter_shapes,
                                generate_params_kwargs=generate_params_kwargs)  # fmt: skip

    # ------------------------------------------------------------ class methods, saving

    @classmethod
    def count_params(cls, target: nn.Module, target_input_shape: Optional[Sequence[Any]] = None, inputs: Any = None) -> int:
        """Number of parameter values of ``target`` (see :func:`hypernn.torch.utils.count_params`)."""
        return count_params(target, target_input_shape, inputs=inputs)

    @classmethod
    def from_target(
        cls,
        target_network: nn.Module,
        target_input_shape: Optional[Sequence[Any]] = None,
        num_target_parameters: Optional[int] = None,
        inputs: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> "TorchHyperNetwork":
        """Build ``cls`` for ``target_network``; ``kwargs`` go to the constructor
        (``embedding_dim``, ``num_embeddings``, ``input_dim``, a subclass's own arguments)."""
        if args:
            raise OptionTypeError(
                f"{cls.__name__}.from_target takes the constructor's arguments by keyword (e.g. `embedding_dim=4`); "
                f"got {len(args)} more positional."
            )
        if num_target_parameters is None:
            num_target_parameters = cls.count_params(target_network, target_input_shape, inputs=inputs)
        return cls(target_network=target_network, num_target_parameters=num_target_parameters, **kwargs)

    def save(self, path: Any) -> None:
        """``torch.save(self.state_dict(), path)``."""
        torch.save(self.state_dict(), path)

    def load(self, path: Any) -> None:
        """Load a state dict saved by :meth:`save` (or by hyper-nn 0.2), onto this device."""
        self.load_state_dict(torch.load(path, map_location=self.device))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """The backend's checked ``load_state_dict``; hyper-nn 0.2's device dummies are dropped."""
        state_dict = {name: value for name, value in state_dict.items() if name not in LEGACY_KEYS}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _generated_specs(model: nn.Module) -> List[ParamSpec]:
    return [spec for spec in param_specs(model) if spec.kind == "parameter" and spec.is_floating]

