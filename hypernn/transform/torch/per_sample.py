"""Run a torch model with a different generated weight set for every sample of a batch.

No Python loop over samples: every module that owns generated tensors gets, for the
duration of the call, a batched forward: a batched-matmul / grouped-convolution /
conditional-batch-norm / batched-recurrence implementation for common layers
(:mod:`.per_sample_layers`, :mod:`.per_sample_rnn`), and ``torch.func.vmap`` over the
module for anything else (its tensor arguments batched along the sample dimension: 0, or
1 inside a ``batch_first=False`` module; independent dropout masks per sample). The
forwards are restored in ``finally``; so is torch's multi-head-attention fast path, which
is switched off during the call (it reads weights directly and cannot take per-sample
ones).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> runner = PerSampleRunner(model, ["0.weight", "0.bias", "2.weight", "2.bias"])
    >>> tensors = {n: p.detach().expand(5, *p.shape) for n, p in model.named_parameters()}
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(runner(model, tensors, 5, (x,), {}), model(x), atol=1e-6)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ...errors import ConditionError
from .per_sample_attention import multihead_attention
from .per_sample_layers import LAYERS, check_batch
from .per_sample_rnn import CELLS, RECURRENT

__all__ = ["PerSampleRunner"]

IMPLEMENTATIONS: Dict[type, Callable[..., Any]] = {**LAYERS, **RECURRENT, **CELLS,
                                                   nn.MultiheadAttention: multihead_attention}  # fmt: skip

#: modules that read their own ``batch_first`` (their inputs' sample dimension is theirs)
SELF_LAYOUT = (nn.RNNBase, nn.MultiheadAttention)

#: layers acting on the last dimension(s): the sample dimension can be moved to the front
MOVABLE = (nn.Linear, nn.LayerNorm, nn.Embedding)

#: native implementations that also read the parameters of their submodules
#: (``MultiheadAttention`` uses ``out_proj.weight`` without calling ``out_proj``)
WHOLE_SUBTREE = (nn.MultiheadAttention,)


@dataclasses.dataclass(frozen=True)
class Owner:
    """A module whose generated tensors vary per sample, and how it runs batched."""

    path: str
    #: ``(name relative to this module, generated name)`` of the tensors it receives
    tensors: Tuple[Tuple[str, str], ...]
    native: bool
    #: where the sample dimension of its input is (1 inside a ``batch_first=False`` module)
    sample_dim: int = 0


def _sample_dim(model: nn.Module, path: str) -> int:
    """0, or 1 when the nearest enclosing module with a ``batch_first`` flag has it off
    (the layers inside a sequence-first transformer see ``(L, B, E)``)."""
    parts = path.split(".") if path else []
    for depth in range(len(parts), -1, -1):
        batch_first = _declared_batch_first(model.get_submodule(".".join(parts[:depth])))
        if batch_first is not None:
            return 0 if batch_first else 1
    return 0


def _declared_batch_first(module: nn.Module) -> Optional[bool]:
    """A module's layout flag: its own ``batch_first``, or its attention's (torch's
    transformer layers keep it there), or its first layer's (encoder/decoder stacks)."""
    if isinstance(module, SELF_LAYOUT):
        return None
    if hasattr(module, "batch_first"):
        return bool(module.batch_first)
    attention = getattr(module, "self_attn", None)
    if isinstance(attention, nn.MultiheadAttention):
        return bool(attention.batch_first)
    layers = getattr(module, "layers", None)
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)) and len(layers):
        return _declared_batch_first(layers[0])
    return None


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _inside(path: str, ancestor: str) -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + ".")


def _relative(name: str, ancestor: str) -> str:
    return name[len(ancestor) + 1 :] if ancestor else name


def plan_owners(model: nn.Module, names: Sequence[str], aliases: Mapping[str, str]) -> Tuple[Owner, ...]:
    """Group generated tensor names by owning module; modules without a batched
    implementation run under ``vmap`` and take over the generated tensors below them."""
    parents = {_parent(n) for n in names}
    for name, module in model.named_modules():
        if isinstance(module, WHOLE_SUBTREE) and any(_inside(p, name) for p in parents):
            parents.add(name)
    paths = sorted(parents, key=lambda p: (p.count(".") if p else -1, p))
    whole: List[str] = []
    owners = []
    for path in paths:
        if any(_inside(path, w) for w in whole):
            continue
        module_type = type(model.get_submodule(path))
        native = module_type in IMPLEMENTATIONS
        subtree = not native or module_type in WHOLE_SUBTREE
        if subtree:
            whole.append(path)
        covered = [n for n in names if (_inside(_parent(n), path) if subtree else _parent(n) == path)]
        tensors = tuple((_relative(n, path), aliases.get(n, n)) for n in covered)
        owners.append(Owner(path, tensors, native, _sample_dim(model, path)))
    return tuple(owners)


def _batch_dims_along(dim: int) -> Callable[..., Any]:
    """Default: every tensor argument is batched along the owner's sample dimension
    (0, or 1 inside a ``batch_first=False`` module); outputs too."""

    def batch_dims(module: nn.Module, args: Tuple, kwargs: Dict) -> Tuple[Tuple, Any]:
        as_dim = lambda leaf: dim if isinstance(leaf, torch.Tensor) else None  # noqa: E731
        return tree_map(as_dim, (args, kwargs)), dim

    return batch_dims


#: module types whose fallback needs other batch dimensions than 0 (none so far)
BATCH_DIMS: Dict[type, Callable[..., Any]] = {}


class _Fallback:
    """``vmap`` over one module: sample ``i`` runs with weight set ``i`` on its own slice
    of the batch (``x[i:i+1]``: the batch dimension kept, of size 1)."""

    def __init__(self, module: nn.Module, tensors: Dict[str, torch.Tensor], batch: int, sample_dim: int = 0):
        self.module, self.tensors, self.batch = module, tensors, batch
        self.batch_dims = BATCH_DIMS.get(type(module)) or _batch_dims_along(sample_dim)
        self.inside = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.inside:  # the call from inside vmap: the module's own forward
            return type(self.module).forward(self.module, *args, **kwargs)
        in_dims, out_dims = self.batch_dims(self.module, args, kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        dims = tree_flatten(in_dims, is_leaf=lambda x: x is None)[0]
        positions = [i for i, d in enumerate(dims) if d is not None]
        for i in positions:
            check_batch(leaves[i], self.batch, f"{type(self.module).__name__} (run under torch.func.vmap)", dims[i])

        def one(tensors: Dict[str, torch.Tensor], *batched: torch.Tensor) -> Any:
            items = list(leaves)
            for i, value in zip(positions, batched):
                items[i] = value.unsqueeze(dims[i])
            call_args, call_kwargs = tree_unflatten(items, spec)
            out = functional_call(self.module, tensors, call_args, call_kwargs, tie_weights=False, strict=False)
            return _squeeze(out, out_dims)

        self.inside = True
        try:
            mapped = torch.func.vmap(one, in_dims=(0, *[dims[i] for i in positions]), out_dims=out_dims,
                                     randomness="different")  # fmt: skip
            return mapped(self.tensors, *[leaves[i] for i in positions])
        except ConditionError:
            raise
        except Exception as err:
            raise ConditionError(
                f"per-sample weights for {type(self.module).__name__} run under torch.func.vmap, which failed: "
                f"{type(err).__name__}: {err}. This layer is not supported in dynamic mode; generate its weights "
                f"statically (exclude it from `targets`) or pass one condition for the whole batch."
            ) from err
        finally:
            self.inside = False


def _squeeze(out: Any, dims: Any) -> Any:
    if isinstance(dims, int):
        return tree_map(lambda o: o.squeeze(dims) if isinstance(o, torch.Tensor) else o, out)
    return type(out)(_squeeze(o, d) for o, d in zip(out, dims))


def _native(module: nn.Module, tensors: Dict[str, torch.Tensor], sample_dim: int, guard: bool) -> Callable[..., Any]:
    implementation = IMPLEMENTATIONS[type(module)]
    params = dict(module.named_parameters())
    params.update(tensors)
    batched = set(tensors)
    if sample_dim and isinstance(module, MOVABLE):
        return lambda x: implementation(module, params, batched, x.movedim(sample_dim, 0)).movedim(0, sample_dim)
    if guard and isinstance(module, MOVABLE):
        def checked(x: torch.Tensor) -> torch.Tensor:
            _refuse_ambiguous(module, x)
            return implementation(module, params, batched, x)

        return checked
    return lambda *args, **kwargs: implementation(module, params, batched, *args, **kwargs)


def _refuse_ambiguous(module: nn.Module, x: torch.Tensor) -> None:
    """In a model with sequence-first layers, a layer outside them that gets ``(L, B, ...)``
    with ``L == B`` cannot tell its sample dimension: refuse rather than guess."""
    if x.dim() >= 3 and x.shape[0] == x.shape[1]:
        raise ConditionError(
            f"per-sample weights for {type(module).__name__}: the model has sequence-first layers "
            f"(batch_first=False) and this layer got an input of shape {tuple(x.shape)}, whose first two "
            f"dimensions are equal, so the sample dimension is ambiguous. Use batch_first=True layers, or a "
            f"sequence length different from the batch size."
        )


#: modules whose forward may take torch's fused attention fast path, which reads the
#: weights directly (it runs only in eval mode without autograd). The switch that turns it
#: off cannot be flipped under torch.compile; there it stays as it is (the selected
#: weights are None on the target, so the fast path cannot silently use stale ones).
FAST_PATH = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


def _has_sequence_first(model: nn.Module) -> bool:
    return any(isinstance(m, SELF_LAYOUT) and not m.batch_first for m in model.modules())


class PerSampleRunner:
    """Plans once which modules run batched and how; runs the model per sample."""

    def __init__(self, model: nn.Module, names: Sequence[str], aliases: Optional[Mapping[str, str]] = None):
        self.owners = plan_owners(model, list(names), dict(aliases or {}))
        #: layers acting on the last dimension refuse ambiguous inputs in models that
        #: also hold sequence-first layers
        self.guard = _has_sequence_first(model)
        #: whether torch's attention fast path must be switched off during the call
        self.attention = any(isinstance(m, FAST_PATH) for m in model.modules())

    def __call__(self, model: nn.Module, tensors: Mapping[str, torch.Tensor], batch: int, args: Tuple, kwargs: Dict) -> Any:
        patched = []
        switch = self.attention and not torch.compiler.is_compiling()
        fast_path = torch.backends.mha.get_fastpath_enabled() if switch else None
        try:
            if switch:
                torch.backends.mha.set_fastpath_enabled(False)
            for owner in self.owners:
                module = model.get_submodule(owner.path)
                own = {relative: tensors[generated] for relative, generated in owner.tensors}
                module.forward = (_native(module, own, owner.sample_dim, self.guard) if owner.native
                                  else _Fallback(module, own, batch, owner.sample_dim))  # fmt: skip
                patched.append(module)
            return model(*args, **kwargs)
        finally:
            for module in patched:
                module.__dict__.pop("forward", None)
            if switch:
                torch.backends.mha.set_fastpath_enabled(fast_path)
