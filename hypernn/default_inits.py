"""What each tensor's own layer would initialise it to: the target of the hyperfan init.

Framework-free: a rule reads a :class:`~hypernn.specs.ParamSpec` (the owning layer's class
names, the attribute name, the shape) and the model's other parameter shapes (a bias needs
its weight's fan-in), under a framework ``convention``:

* ``"torch"``: ``Linear``/``Conv*`` weights kaiming-uniform(a=sqrt(5)) and their biases
  uniform(+-1/sqrt(fan_in)), both of variance ``1/(3 fan_in)`` with torch's fan-in
  ``shape[1] * prod(shape[2:])``; ``Embedding`` N(0, 1); norm weights ones and biases
  zeros; ``MultiheadAttention`` xavier-uniform projections and zero biases; recurrent
  layers uniform(+-1/sqrt(hidden_size)).
* ``"flax"``: ``Dense``/``Linear``/``Conv`` kernels lecun-normal, variance ``1/fan_in``
  with ``fan_in = prod(shape[:-1])`` (kernels are ``(*window, in, out)``); biases zeros;
  ``Embed`` variance ``1/features``; norm scales ones and biases zeros.

Any other layer (a custom module, ``DenseGeneral``): the mean and standard deviation of
the tensor's current values (``measure``), which for a freshly built model are its init.

    >>> spec = ParamSpec("fc.weight", (8, 12), "float32", ((("", object), ("fc", type("Linear", (), {}))),))
    >>> init = target_init(spec, convention="torch", shapes={"fc.weight": (8, 12)})
    >>> round(init.std ** 2 * 3 * 12, 6), init.rule
    (1.0, 'kaiming_uniform(a=sqrt(5)), fan_in=12')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from .errors import ConfigurationError
from .specs import ParamSpec

__all__ = ["CONVENTIONS", "TargetInit", "target_init", "torch_fans"]

CONVENTIONS = ("torch", "flax")

#: ``(mean, std)`` of a tensor's current values, supplied by the backend
Measure = Callable[[Any], Tuple[float, float]]

_TORCH_NORMS = {"_NormBase", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm"}
_FLAX_NORMS = {"LayerNorm", "BatchNorm", "GroupNorm", "RMSNorm", "InstanceNorm"}
_FLAX_KERNELS = {"Dense", "Conv", "ConvTranspose", "Linear"}


@dataclasses.dataclass(frozen=True)
class TargetInit:
    """A tensor's default init: mean and standard deviation (0 for a constant), and how."""

    std: float
    mean: float = 0.0
    rule: str = ""

    @property
    def is_constant(self) -> bool:
        return self.std == 0.0


def torch_fans(shape: Sequence[int]) -> Tuple[int, int]:
    """torch's ``(fan_in, fan_out)``: ``shape[1]`` / ``shape[0]`` times the receptive field."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _constant(value: float, rule: str) -> TargetInit:
    return TargetInit(0.0, value, rule)


def _class_names(cls: Any) -> Tuple[str, ...]:
    return tuple(c.__name__ for c in getattr(cls, "__mro__", (cls,)))


def _owner_and_parent(spec: ParamSpec) -> Tuple[Tuple[str, ...], Tuple[str, ...], str]:
    chain = spec.module_chains[0] if spec.module_chains else ()
    owner = _class_names(chain[-1][1]) if chain else ()
    parent = _class_names(chain[-2][1]) if len(chain) > 1 else ()
    return owner, parent, spec.name.rpartition(".")[2]


def _kaiming(fan_in: int) -> TargetInit:
    return TargetInit(math.sqrt(1.0 / (3 * fan_in)), 0.0, f"kaiming_uniform(a=sqrt(5)), fan_in={fan_in}")


def _sibling(spec: ParamSpec, shapes: Mapping[str, Tuple[int, ...]], attribute: str) -> Optional[Tuple[int, ...]]:
    owner = spec.name.rpartition(".")[0]
    return shapes.get(f"{owner}.{attribute}" if owner else attribute)


def _torch_rnn(owner: Tuple[str, ...], attribute: str, shape: Tuple[int, ...]) -> TargetInit:
    gates = 4 if {"LSTM", "LSTMCell"} & set(owner) else 3 if {"GRU", "GRUCell"} & set(owner) else 1
    hidden = shape[1] if attribute.startswith("weight_hr") else shape[0] // gates
    return TargetInit(math.sqrt(1.0 / (3 * hidden)), 0.0, f"uniform(+-1/sqrt(hidden_size)), hidden_size={hidden}")


def _torch_linear_or_conv(spec: ParamSpec, owner: Tuple[str, ...], attribute: str, shapes) -> Optional[TargetInit]:
    weight = spec.shape if attribute == "weight" else _sibling(spec, shapes, "weight")
    if weight is None or len(weight) < 2 or attribute not in ("weight", "bias"):
        return None
    fan_in = weight[1] if "Bilinear" in owner else torch_fans(weight)[0]
    init = _kaiming(fan_in)
    return init if attribute == "weight" else dataclasses.replace(init, rule=f"uniform(+-1/sqrt(fan_in)), fan_in={fan_in}")


def _torch_attention(attribute: str, shape: Tuple[int, ...]) -> Optional[TargetInit]:
    if attribute in ("in_proj_bias",):
        return _constant(0.0, "zeros")
    if attribute in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"):
        fan_in, fan_out = torch_fans(shape)
        kind = "xavier_normal" if attribute.startswith("bias") else "xavier_uniform"
        return TargetInit(math.sqrt(2.0 / (fan_in + fan_out)), 0.0, kind)
    return None


def _torch_rule(spec: ParamSpec, shapes: Mapping[str, Tuple[int, ...]]) -> Optional[TargetInit]:
    owner, parent, attribute = _owner_and_parent(spec)
    if {"Embedding", "EmbeddingBag"} & set(owner) and attribute == "weight":
        return TargetInit(1.0, 0.0, "normal(0, 1)")
    if _TORCH_NORMS & set(owner) and attribute in ("weight", "bias"):
        return _constant(1.0 if attribute == "weight" else 0.0, "ones" if attribute == "weight" else "zeros")
    if "MultiheadAttention" in owner:
        return _torch_attention(attribute, spec.shape)
    if "MultiheadAttention" in parent and "Linear" in owner and attribute == "bias":
        return _constant(0.0, "zeros")
    if {"RNNBase", "RNNCellBase"} & set(owner):
        return _torch_rnn(owner, attribute, spec.shape)
    if "PReLU" in owner and attribute == "weight":
        return _constant(0.25, "constant(0.25)")
    if {"Linear", "_ConvNd", "Bilinear"} & set(owner):
        return _torch_linear_or_conv(spec, owner, attribute, shapes)
    return None


def _flax_attention(spec: ParamSpec, attribute: str) -> Optional[TargetInit]:
    """``DenseGeneral``/``LinearGeneral`` projections of flax attention: lecun normal over
    the input axes (``(in, heads, head_dim)`` for query/key/value, ``(heads, head_dim, out)``
    for out), zero biases."""
    if attribute == "bias":
        return _constant(0.0, "zeros")
    role = spec.name.rpartition(".")[0].rpartition(".")[2]
    if attribute != "kernel" or role not in ("query", "key", "value", "out"):
        return None
    fan_in = spec.shape[0] if role != "out" else math.prod(spec.shape[:-1])
    return TargetInit(math.sqrt(1.0 / fan_in), 0.0, f"lecun_normal, fan_in={fan_in}")


def _flax_rule(spec: ParamSpec) -> Optional[TargetInit]:
    owner, parent, attribute = _owner_and_parent(spec)
    if {"DenseGeneral", "LinearGeneral"} & set(owner) and {"MultiHeadDotProductAttention", "MultiHeadAttention"} & set(parent):
        return _flax_attention(spec, attribute)
    if "Embed" in owner and attribute == "embedding":
        return TargetInit(math.sqrt(1.0 / spec.shape[-1]), 0.0, f"variance_scaling(1, fan_in, normal), features={spec.shape[-1]}")
    if _FLAX_NORMS & set(owner) and attribute in ("scale", "bias"):
        return _constant(1.0 if attribute == "scale" else 0.0, "ones" if attribute == "scale" else "zeros")
    if _FLAX_KERNELS & set(owner) and attribute == "kernel" and len(spec.shape) >= 2:
        fan_in = math.prod(spec.shape[:-1])
        return TargetInit(math.sqrt(1.0 / fan_in), 0.0, f"lecun_normal, fan_in={fan_in}")
    if _FLAX_KERNELS & set(owner) and attribute == "bias":
        return _constant(0.0, "zeros")
    return None


def _fallback(spec: ParamSpec, convention: str) -> TargetInit:
    """Without a rule or values: the framework's generic kernel init, zeros for vectors."""
    if len(spec.shape) < 2:
        return _constant(0.0, "zeros")
    if convention == "torch":
        return _kaiming(torch_fans(spec.shape)[0])
    fan_in = math.prod(spec.shape[:-1])
    return TargetInit(math.sqrt(1.0 / fan_in), 0.0, f"lecun_normal, fan_in={fan_in}")


def target_init(
    spec: ParamSpec,
    *,
    convention: str,
    shapes: Mapping[str, Tuple[int, ...]],
    measure: Optional[Measure] = None,
) -> TargetInit:
    """The default init of ``spec``'s tensor under ``convention`` (``"torch"``/``"flax"``).

    Args:
        spec: the tensor (its owner's class names and attribute name choose the rule).
        shapes: every parameter's shape by name (a bias's fan-in comes from its weight).
        measure: ``value -> (mean, std)`` (or ``None`` for abstract values) for tensors of
            layers without a rule.
    """
    if convention not in CONVENTIONS:
        raise ConfigurationError(f"`convention` must be one of {CONVENTIONS}; got {convention!r}.")
    rule = _torch_rule(spec, shapes) if convention == "torch" else _flax_rule(spec)
    if rule is not None:
        return rule
    measured = measure(spec.value) if measure is not None and spec.value is not None and spec.size > 0 else None
    if measured is not None:
        mean, std = measured
        return TargetInit(std, mean, "measured from the model's values") if std > 0 else _constant(mean, "measured constant")
    return _fallback(spec, convention)
