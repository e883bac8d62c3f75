"""hyper-nn's ``JaxHyperNetwork``, as a thin layer over hypernn's linen backend.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> target = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(32)])
    >>> hnet = JaxHyperNetwork.from_target(target, embedding_dim=4, num_embeddings=32, inputs=jnp.zeros((1, 32)))
    >>> hnet.num_target_parameters, hnet.weight_chunk_dim
    (4192, 131)
    >>> variables = hnet.init(jax.random.key(0), jnp.zeros((1, 32)))
    >>> output, generated_params, aux = hnet.apply(variables, jnp.ones((5, 32)), has_aux=True)
    >>> output.shape, generated_params.shape, aux["embedding"].shape
    ((5, 32), (4192,), (32, 4))
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ..base import HyperNetwork, check_generated_length, hypernetwork_sizes, run_hypernetwork
from ..errors import GeneratedParamsError, GeneratedParamsTypeError, GeneratorOutputError, OptionTypeError
from ..options import HypernetizeOptions
from ..transform.jaxcheckpoint import restore_variables
from ..transform.jaxutil import is_floating, set_path
from ..transform.linen.module import LinenHypernetwork, LinenPlan, check_model, make_plan
from .utils import count_jax_params, example_inputs

__all__ = ["JaxHyperNetwork", "create_param_tree"]


def create_param_tree(generated_params: jax.Array, target_weight_shapes: Sequence[Tuple[int, ...]], target_treedef: Any) -> Any:
    """hyper-nn's helper: consecutive slices of ``generated_params``, reshaped to
    ``target_weight_shapes``, unflattened with ``target_treedef`` (extra values ignored).

        >>> tree = jax.tree_util.tree_structure({"params": {"b": 0, "w": 0}})
        >>> create_param_tree(jnp.arange(7.0), [(2,), (2, 2)], tree)["params"]["w"].shape
        (2, 2)
    """
    sizes = [int(np.prod(shape)) for shape in target_weight_shapes]
    check_generated_length(generated_params.shape[-1], sum(sizes))
    offsets = np.cumsum([0] + sizes)
    leaves = [generated_params[start:end].reshape(shape) for start, end, shape in zip(offsets, offsets[1:], target_weight_shapes)]
    return jax.tree_util.tree_unflatten(target_treedef, leaves)


#: options by sizes: a stable object per configuration (the linen backend caches lazily
#: traced plans per options object)
_OPTIONS: Dict[Hashable, HypernetizeOptions] = {}


def _options(embedding_dim: int, num_embeddings: int, chunk_dim: Optional[int]) -> HypernetizeOptions:
    key = (embedding_dim, num_embeddings, chunk_dim)
    if key not in _OPTIONS:
        _OPTIONS[key] = HypernetizeOptions(embedding_dim=embedding_dim, num_embeddings=num_embeddings, chunk_dim=chunk_dim)
    return _OPTIONS[key]


def _adopted(module: Optional[nn.Module]) -> Optional[nn.Module]:
    """A fresh copy of a user's module, so setup can name it (``weight_generator``)."""
    return None if module is None else module.clone(parent=None, name=None, _deep_clone=True)


def _generates_by_default(cls: type) -> bool:
    return (getattr(cls.generate_params, "__module__", None) or "").startswith("hypernn.")


class JaxHyperNetwork(LinenHypernetwork, HyperNetwork):
    """hyper-nn's linen hypernetwork (both API generations), on hypernn's linen backend.

    An ``nn.Embed(num_embeddings, embedding_dim)`` (uniform init, as in hyper-nn) and an
    ``nn.Dense(weight_chunk_dim)`` generate ``num_embeddings`` chunks of
    ``weight_chunk_dim = ceil(num_target_parameters / num_embeddings)`` values, cut end to
    end into the target's ``params`` (in ``jax.tree_util`` leaf order; the surplus of the
    last chunk is unused). Build it with :meth:`from_target`; customise it by passing
    ``custom_embedding_module``/``custom_weight_generator`` or by overriding
    :meth:`make_embedding_module`, :meth:`make_weight_generator` and
    :meth:`generate_params`.

    Differences from hyper-nn 0.2: it runs on today's jax/flax; only ``params`` are
    generated, other collections (``batch_stats``) stay in the variables as in the target
    (``apply(..., mutable=["batch_stats"])`` updates them); ``num_target_parameters`` is
    honoured; ``custom_weight_generator`` works; bad vectors raise
    :class:`~hypernn.errors.GeneratedParamsError` instead of a bare ``assert``.

    Attributes (linen fields): ``target_network``, ``num_target_parameters``,
    ``target_treedef`` and ``target_weight_shapes`` (of ``{"params": ...}``, computed by
    :meth:`from_target`), ``embedding_dim``, ``num_embeddings``, ``weight_chunk_dim``,
    ``custom_embedding_module``, ``custom_weight_generator``.
    """

    target_network: nn.Module
    num_target_parameters: Optional[int] = None
    target_treedef: Any = None
    target_weight_shapes: Sequence[Tuple[int, ...]] = ()
    embedding_dim: int = 100
    num_embeddings: int = 3
    weight_chunk_dim: Optional[int] = None
    custom_embedding_module: Optional[nn.Module] = None
    custom_weight_generator: Optional[nn.Module] = None

    # ------------------------------------------------------------ the backend's hooks

    def hypernn_target(self) -> nn.Module:
        return self.target_network

    def hypernn_options(self) -> HypernetizeOptions:
        chunk = self.weight_chunk_dim
        if chunk is None and self.num_target_parameters is not None:
            chunk = hypernetwork_sizes(counted=0, num_target_parameters=self.num_target_parameters,
                                       num_embeddings=self.num_embeddings, weight_chunk_dim=None)[1]  # fmt: skip
        return _options(self.embedding_dim, self.num_embeddings, chunk)

    # ------------------------------------------------------------ modules

    def setup(self) -> None:
        self.embedding_module = _adopted(self.custom_embedding_module) or self.make_embedding_module()
        self.weight_generator = _adopted(self.custom_weight_generator) or self.make_weight_generator()

    def make_embedding_module(self) -> nn.Module:
        """hyper-nn's embedding: ``nn.Embed(num_embeddings, embedding_dim)``, U[0, 0.01) init."""
        return nn.Embed(self.num_embeddings, self.embedding_dim, embedding_init=jax.nn.initializers.uniform())

    def make_weight_generator(self) -> nn.Module:
        """``nn.Dense(weight_chunk_dim)``."""
        return nn.Dense(self._chunk_dim())

    def _probe(self) -> None:
        # An overridden generate_params decides itself how the modules fit together (and
        # may need inputs): nothing to probe then.
        if _generates_by_default(type(self)):
            super()._probe()

    def _chunk_dim(self) -> int:
        return self.weight_chunk_dim if self.weight_chunk_dim is not None else self.layout.chunk_dim

    def _required(self) -> int:
        """The values a generated vector holds at least."""
        return self.num_target_parameters if self.num_target_parameters is not None else self.layout.num_params

    # ------------------------------------------------------------ generating and running

    def generate_params(self, *args: Any, **kwargs: Any) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """``(flat vector of num_embeddings * weight_chunk_dim values, {"embedding": ...})``.

        Static: the arguments (the target's inputs, which ``forward`` passes on) do not
        change the weights.
        """
        embedding = self.embedding_module(jnp.arange(self.num_embeddings))
        chunks = self.weight_generator(embedding)
        self._check_chunks(chunks, ())
        return chunks.reshape(-1), {"embedding": embedding}

    def _check_chunks(self, chunks: Any, lead: Tuple[int, ...]) -> None:
        expected = tuple(lead) + (self.num_embeddings, self._chunk_dim())
        shape = getattr(chunks, "shape", None)
        if shape is None or tuple(shape) != expected:
            given = tuple(shape) if shape is not None else type(chunks).__name__
            raise GeneratorOutputError(
                f"the weight generator must map the embeddings to shape (num_embeddings, weight_chunk_dim)={expected}; "
                f"it gave {given}. A `custom_weight_generator` must give weight_chunk_dim={self._chunk_dim()} outputs."
            )

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Raise a clear error unless ``generated_params`` is a floating-point vector of at
        least ``num_target_parameters`` values (hyper-nn: a bare ``assert``)."""
        self._check_vector(generated_params, max_dims=1)

    def _check_vector(self, generated_params: Any, max_dims: int) -> None:
        if not isinstance(generated_params, (jax.Array, np.ndarray)):
            raise GeneratedParamsTypeError(f"`generated_params` must be a jax array; got {type(generated_params).__name__}.")
        if not is_floating(generated_params.dtype):
            raise GeneratedParamsTypeError(f"`generated_params` must be a floating-point array; got dtype {generated_params.dtype}.")
        if not 1 <= generated_params.ndim <= max_dims:
            batched = " or a (batch, n) batch of vectors" if max_dims == 2 else "; use jax.vmap for a batch of vectors"
            raise GeneratedParamsError(f"`generated_params` must be a vector{batched}; got shape {tuple(generated_params.shape)}.")
        check_generated_length(generated_params.shape[-1], self._required())

    def target_forward(
        self, *args: Any, generated_params: jax.Array, assert_parameter_shapes: bool = True, **kwargs: Any
    ) -> Any:
        """Apply the target network with ``generated_params`` as its ``params``."""
        if assert_parameter_shapes:
            self.assert_parameter_shapes(generated_params)
        return self._run_target(generated_params, args, kwargs)

    def _run_target(self, generated_params: jax.Array, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        # the backend's target_forward (static, or per sample for a dynamic subclass), on the
        # values the target uses (hyper-nn ignores the rest)
        return super(JaxHyperNetwork, self).target_forward(
            *args, generated_params=generated_params[..., : self.layout.num_params], assert_parameter_shapes=False, **kwargs
        )

    def forward(
        self,
        *args: Any,
        generated_params: Optional[jax.Array] = None,
        has_aux: bool = False,
        assert_parameter_shapes: bool = True,
        generate_params_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Generate the parameters (unless given) and apply the target to ``args``/``kwargs``.

        ``generate_params`` receives the target's inputs when its signature takes them,
        and ``generate_params_kwargs`` (see :func:`hypernn.base.call_generate_params`).
        Returns the output, or ``(output, generated_params, aux)`` with ``has_aux=True``.
        """
        return run_hypernetwork(self, args, kwargs, generated_params=generated_params, has_aux=has_aux,
                                assert_parameter_shapes=assert_parameter_shapes,
                                generate_params_kwargs=generate_params_kwargs)  # fmt: skip

    @nn.compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``self.forward(*args, **kwargs)`` (hyper-nn's call)."""
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ class methods, saving

    @classmethod
    def count_params(
        cls, target: nn.Module, target_input_shape: Optional[Sequence[Any]] = None, inputs: Any = None,
        return_variables: bool = False, **kwargs: Any,
    ) -> Any:  # fmt: skip
        """Number of ``params`` values of ``target`` (see :func:`hypernn.jax.utils.count_jax_params`)."""
        return count_jax_params(target, target_input_shape, inputs=inputs, return_variables=return_variables, **kwargs)

    @classmethod
    def from_target(
        cls,
        target_network: nn.Module,
        target_input_shape: Optional[Sequence[Any]] = None,
        num_target_parameters: Optional[int] = None,
        inputs: Any = None,
        embedding_dim: int = 100,
        num_embeddings: int = 3,
        weight_chunk_dim: Optional[int] = None,
        *args: Any,
        init_kwargs: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> "JaxHyperNetwork":
        """Build ``cls`` for ``target_network``, tracing its structure on ``inputs`` (one
        array or a list of the target's positional arguments) or zeros of
        ``target_input_shape``; ``init_kwargs`` (e.g. ``{"train": False}``) go to that
        trace, ``kwargs`` to the constructor (``input_dim``, a subclass's own fields)."""
        if args:
            raise OptionTypeError(
                f"{cls.__name__}.from_target takes the constructor's arguments by keyword; got {len(args)} more positional."
            )
        check_model(target_network)
        arguments = tuple(example_inputs(target_input_shape, inputs))
        counted = count_jax_params(target_network, inputs=list(arguments), **dict(init_kwargs or {}))
        total, chunk = hypernetwork_sizes(counted=counted, num_target_parameters=num_target_parameters,
                                          num_embeddings=num_embeddings, weight_chunk_dim=weight_chunk_dim)  # fmt: skip
        plan = make_plan(target_network, _options(embedding_dim, num_embeddings, chunk or None), arguments, dict(init_kwargs or {}))
        treedef, shapes = _param_structure(plan)
        hnet = cls(target_network=target_network, num_target_parameters=total, target_treedef=treedef,
                   target_weight_shapes=shapes, embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                   weight_chunk_dim=chunk, hypernn_plan=plan, **kwargs)  # fmt: skip
        hnet._probe()
        return hnet

    def save(self, params: Any, path: Any) -> None:
        """Write the variables ``params`` to ``path`` (``flax.serialization.to_bytes``)."""
        with open(path, "wb") as file:
            file.write(serialization.to_bytes(params))

    def load(self, params: Any, path: Any) -> Any:
        """The variables saved at ``path``, restored into the structure of ``params``;
        a checkpoint of another structure raises
        :class:`~hypernn.errors.CheckpointMismatchError` naming every difference."""
        with open(path, "rb") as file:
            saved = serialization.msgpack_restore(file.read())
        return restore_variables(params, saved)


def _param_structure(plan: LinenPlan) -> Tuple[Any, Tuple[Tuple[int, ...], ...]]:
    """hyper-nn's ``target_treedef`` and ``target_weight_shapes``, of ``{"params": ...}`` only."""
    shapes = {spec.name: spec.shape for spec in plan.structure.specs if spec.kind == "parameter"}
    params: Dict[str, Any] = {}
    for name, path in plan.structure.param_paths:
        set_path(params, path, jax.ShapeDtypeStruct(shapes[name], jnp.float32))
    leaves, treedef = jax.tree_util.tree_flatten({"params": params})
    return treedef, tuple(tuple(leaf.shape) for leaf in leaves)

