"""Time one jitted training step of a *dynamic* (per-sample) JAX hypernetwork against two baselines.

The JAX counterpart of ``torch_dynamic_step.py``. A dynamic hypernetwork generates one
weight set per sample from that sample's condition: ``hnet = hypernetize(model,
embedding_dim=D, num_embeddings=E, condition_dim=C)``, then ``hnet.apply(variables, x,
condition=c)`` (linen) or ``hnet(x, condition=c)`` (NNX) with ``c`` of shape ``(B, C)``
runs sample ``i`` with weight set ``i`` (``jax.vmap`` over the model's functional call).
The default conditioning is FiLM: ``emb_i = E_table * (1 + scale(c_i)) + shift(c_i)``
(``scale``/``shift`` from one Dense ``C -> 2D``), then the Dense generator maps every chunk
embedding to ``chunk_dim`` values; the ``(B, E * chunk_dim)`` result is cut into the
model's tensors (global layout: flax order, ``bias`` before ``kernel`` per layer, end to
end, padding last).

Two target models (workloads), batch 256, in flax layout:

* ``mlp``: ``Dense(32 -> 64), relu, Dense(64 -> 32)``, MSE loss against a random target;
* ``cnn``: ``Conv(3 -> 8, 3x3, VALID), relu, Conv(8 -> 8, 3x3, VALID), relu, flatten,
  Dense(128 -> 10)`` on NHWC ``8x8x3`` inputs, softmax cross-entropy (integer labels).

Implementations of the same math; one step is forward, loss, gradient and an
``optax.adam`` update:

* ``linen``: the linen dynamic hypernetwork (default ``init="hyperfan"``), ``hnet.apply``
  inside one ``jax.jit`` step over its params (the same step wrapper as ``hand``), its
  ``"hypernn"`` collection (the start map, made by ``hnet.init`` next to ``params``) closed
  over as a constant, like the NNX rows' non-``Param`` state;
* ``nnx`` (pure): the NNX dynamic hypernetwork, ``nnx.split`` once, then the same
  ``jax.jit`` step over the ``nnx.Param`` State with ``nnx.merge`` inside;
* ``nnx_jit`` (informational): the NNX-tutorial style, ``nnx.jit`` over ``(model,
  nnx.Optimizer)`` with ``nnx.value_and_grad`` (pays NNX's Python graph traversal per call);
* ``hand``: the linen rows' baseline, a hand-written pure function: the same embedding
  table, FiLM and generator (initial values copied from the linen hypernetwork), the
  hyperfan start map (below), one ``jnp.split`` of the ``(B, G)`` vector at the layout
  offsets (re-derived here from the layer sizes and checked against hypernn's layout),
  ``jnp.einsum("bi,bio->bo")`` for Dense and one grouped convolution
  (``feature_group_count=B``; ``--hand-conv vmap``: ``jax.vmap`` of
  ``lax.conv_general_dilated``, the same HLO) for Conv. Target: hypernn at most 1.2x its time.
  Both hypernetworks use the default ``init="hyperfan"``: a fixed per-tensor affine map
  after the generator (``flat = shift + scale * raw``, hypernn/init.py; hyperfan's common
  scale folded into the generator). The twins write it by hand: per-element scale and
  shift vectors built once, outside the step, from the hypernetwork's per-tensor values
  (here linen's ``variables["hypernn"]["start"]``), closed over as constants like the
  hypernetworks' own maps;
* ``hand_hyperfan``: the NNX rows' baseline: ``hand`` with the NNX hypernetwork's start map
  (``hnet.output_affine``) and initial values (its FiLM given the linen one's values);
* ``hand_im2col`` (informational, models with a Conv): the same, but each Conv as patches
  (``lax.conv_general_dilated_patches``) and one batched matmul. On XLA:CPU the kernel
  gradient of a grouped convolution (a ``batch_group_count=B`` convolution) is expanded
  into a dense convolution ~B times too large: ~0.7 s per Conv layer at B=256, where
  im2col takes milliseconds. hypernn's ``jax.vmap`` of ``nn.Conv`` compiles to that same
  grouped convolution, so this row shows what the CNN step could cost;
* ``linen_loop`` / ``nnx_loop``: the naive implementation, a Python loop over samples: for
  every sample ``i`` one call of a jitted per-sample function (the hypernetwork with one
  ``(C,)`` condition: generate sample ``i``'s weights from ``c[i]``, run the model on
  ``x[i:i+1]``, return its loss (``/ B``) and gradients), the gradients summed by a jitted
  tree add called from Python, then one jitted Adam update. To make the loop as fast as
  such a loop gets (so that the speedup is not inflated), the per-sample function slices
  sample ``i`` itself (``lax.dynamic_slice``: no eager slicing calls per sample), and the
  NNX loop passes its params as a plain dict (``nnx.to_pure_dict``; an ``nnx.State``
  argument costs ~15 us more per call to flatten). Target: hypernn at least 10x faster.

``--loop-samples N`` times the loops on the first ``N`` samples only and scales their time
by ``B / N``; the default runs the whole batch, unscaled (one loop step per round).

Before timing, the script asserts that each hypernetwork (and ``hand_im2col``) and the
hand-written function give the same outputs, loss and gradients on one batch and the same
losses and parameters over 3 Adam steps (``nnx_jit``: losses and parameters), and that
each loop gives the same per-sample outputs, loss and gradients as its hypernetwork on the
first 8 samples and the same parameters as the hand-written step after one Adam step on
the whole batch. FiLM is zero-initialised by hypernn (every sample would get the same
weights), so the benchmark first gives it small random values (normal, std 0.1) and checks
that two samples' weights differ. The timed runners are the checked ones.

Timing interleaves the implementations round by round (rotating the order), blocks on the
last loss of every round (``jax.block_until_ready``; each step depends on the previous)
and reports medians; the ratios to the hand-written step and the loop/hypernn speedups
are medians of per-round ratios. A batched row runs ``--steps`` steps per round, fewer
(at least one) when slower than ``--round-ms`` per round; rounds: ``--rounds``, fewer (at
least 3) when they would take over ``--budget`` seconds (the grouped-conv CNN rows take
~1.5 s per step). XLA on CPU is pinned to one thread (unless ``XLA_FLAGS`` is already set)
and the clock is process CPU time, so other processes on a shared machine do not count;
``--clock wall`` for elapsed time.

Memory ("XLA step mem"): ``temp + argument + output`` bytes from the memory analysis of
the compiled step (``jax.jit(step).lower(...).compile().memory_analysis()``; for
``nnx_jit`` the same through ``nnx.jit(...).lower``). For the loops: the largest of their
three compiled functions (per-sample gradient, tree add, Adam update). Arguments include
the parameters, Adam state and the batch. ``--rss`` adds a cross-check (Linux): each
implementation runs in a fresh subprocess, which compiles and runs one step, resets its
peak-RSS mark (``/proc/self/clear_refs``), runs 3 steps and reports the peak RSS
(``VmHWM``) above the RSS before them (includes allocator caching and steps in flight;
coarse).

Usage::

    python benchmarks/jax_dynamic_step.py                  # both workloads, linen + NNX, ~1.5 min CPU
    python benchmarks/jax_dynamic_step.py --workload mlp --rounds 21 --rss
    python benchmarks/jax_dynamic_step.py --workload cnn --hand-conv im2col
    python benchmarks/jax_dynamic_step.py --loop-samples 64 --nnx pure
    python benchmarks/jax_dynamic_step.py --json /tmp/jax_dynamic.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import dataclasses
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from hypernn import hypernetize
from common import CLOCKS, check_round_args, write_json
from jax_start_twin import linen_start_map, nnx_start_map

TARGET_RATIO = 1.2  # hypernn / hand-written, at most
TARGET_SPEEDUP = 10.0  # loop / hypernn, at least
BATCH = 256
LEARNING_RATE = 1e-3
FILM_STD = 0.1
CHECK_SAMPLES = 8  # the loops are checked against the hypernetwork on this many samples

#: every implementation (row), in report order; which hypernetwork each loop is compared to
IMPLS = ("hand", "hand_hyperfan", "hand_im2col", "linen", "linen_loop", "nnx", "nnx_jit", "nnx_loop")
LOOPS = {"linen_loop": "linen", "nnx_loop": "nnx"}
HYPERNETS = ("linen", "nnx")
#: the hypernetwork each row is compared with in the "hypernn speedup" column
REFERENCE = {"linen": "linen", "linen_loop": "linen", "nnx": "nnx", "nnx_jit": "nnx", "nnx_loop": "nnx"}
#: the hand-written baseline of each row ("vs hand" column, targets): the NNX rows' has the
#: NNX hypernetwork's start map and values; the others' ("hand") the linen hypernetwork's
BASELINES = {"nnx": "hand_hyperfan", "nnx_jit": "hand_hyperfan", "nnx_loop": "hand_hyperfan"}
LABELS = {"hand": "hand-written (linen)", "hand_hyperfan": "hand-written (NNX)", "hand_im2col": "hand-written (im2col)",
          "linen": "linen hypernn",
          "linen_loop": "linen python loop", "nnx": "nnx hypernn (pure)", "nnx_jit": "nnx hypernn (nnx.jit)",
          "nnx_loop": "nnx python loop"}  # fmt: skip
MIN_ROUNDS = 3

Params = Any
Batch = Tuple[jax.Array, jax.Array, jax.Array]  # (x, condition, target)
Layer = Tuple  # ("dense", in, out) | ("conv", in, out, kernel) | ("relu",) | ("flatten",)
#: a step runner: ``run(batch) -> loss``; it carries its own params and optimizer state
Runner = Callable[[Batch], jax.Array]


def baseline_of(name: str) -> str:
    """The hand-written row ``name`` is compared with (see :data:`BASELINES`)."""
    return BASELINES.get(name, "hand")


# ---------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Workload:
    """A target model, its data and the hypernetwork's sizes."""

    name: str
    layers: Tuple[Layer, ...]
    input_shape: Tuple[int, ...]  # one sample's (NHWC for images)
    loss: str  # "mse" (target of the output's shape) or "ce" (integer labels)
    outputs: int
    embedding_dim: int
    num_embeddings: int
    condition_dim: int

    def describe(self) -> str:
        """``Dense(32,64)-relu-...`` for the report."""
        names = {"dense": "Dense", "conv": "Conv", "relu": "relu", "flatten": "flatten"}
        return "-".join(names[layer[0]] + (f"({','.join(map(str, layer[1:]))})" if len(layer) > 1 else "")
                        for layer in self.layers)  # fmt: skip


WORKLOADS = {
    "mlp": Workload("mlp", (("dense", 32, 64), ("relu",), ("dense", 64, 32)), (32,), "mse", 32,
                    embedding_dim=32, num_embeddings=64, condition_dim=16),
    "cnn": Workload("cnn", (("conv", 3, 8, 3), ("relu",), ("conv", 8, 8, 3), ("relu",), ("flatten",),
                            ("dense", 128, 10)), (8, 8, 3), "ce", 10,
                    embedding_dim=32, num_embeddings=32, condition_dim=16),
}  # fmt: skip


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class LinenTarget(nn.Module):
    """The target model in linen (``Dense_0``, ``Conv_0``, ...; VALID convolutions)."""

    layers: Tuple[Layer, ...]

    @nn.compact
    def __call__(self, x):
        for layer in self.layers:
            if layer[0] == "dense":
                x = nn.Dense(layer[2])(x)
            elif layer[0] == "conv":
                x = nn.Conv(layer[2], (layer[3], layer[3]), padding="VALID")(x)
            elif layer[0] == "relu":
                x = jax.nn.relu(x)
            else:
                x = flatten(x)
        return x


def build_nnx_target(workload: Workload, seed: int = 0) -> nnx.Sequential:
    """The same model in NNX: ``nnx.Sequential`` of ``Linear``/``Conv``/``relu``/``flatten``."""
    rngs = nnx.Rngs(seed)
    make = {
        "dense": lambda _, i, o: nnx.Linear(i, o, rngs=rngs),
        "conv": lambda _, i, o, k: nnx.Conv(i, o, (k, k), padding="VALID", rngs=rngs),
        "relu": lambda _: nnx.relu,
        "flatten": lambda _: flatten,
    }
    return nnx.Sequential(*(make[layer[0]](*layer) for layer in workload.layers))


class HandLayout:
    """Where each tensor lives in the flat vector, re-derived from the layer sizes: flax
    order (per layer ``bias`` then ``kernel``), layers in order, end to end, chunks of
    ``ceil(P / E)`` values, padding at the end."""

    def __init__(self, workload: Workload):
        shapes: List[Tuple[int, ...]] = []
        for layer in workload.layers:
            if layer[0] == "dense":
                shapes += [(layer[2],), (layer[1], layer[2])]
            elif layer[0] == "conv":
                shapes += [(layer[2],), (layer[3], layer[3], layer[1], layer[2])]
        self.shapes = tuple(shapes)
        sizes = [math.prod(s) for s in shapes]
        self.offsets = tuple(np.cumsum([0] + sizes)[:-1].tolist())
        total = sum(sizes)
        self.chunk_dim = math.ceil(total / workload.num_embeddings)
        padding = workload.num_embeddings * self.chunk_dim - total
        self.split_sizes = tuple(sizes + ([padding] if padding else []))
        self.boundaries = tuple(np.cumsum(self.split_sizes)[:-1].tolist())


# ---------------------------------------------------------------- the hand-written implementation


def hand_generate(params: Params, condition: jax.Array) -> jax.Array:
    """FiLM + generator: ``(B, G)`` for ``(B, C)`` conditions (``(G,)`` for ``(C,)``).

    ``params`` is the linen hypernetwork's params tree (a plain dict: the same leaves in the
    same order, so every jitted step takes and returns its arrays alike).
    """
    film = params["condition_module"]["to_scale_shift"]
    scale, shift = jnp.split((condition @ film["kernel"] + film["bias"])[..., None, :], 2, axis=-1)
    embedding = params["embedding_module"]["embedding"] * (1 + scale) + shift  # (..., E, D)
    generator = params["weight_generator"]
    return (embedding @ generator["kernel"] + generator["bias"]).reshape(*condition.shape[:-1], -1)


def grouped_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Per-sample kernels as one grouped convolution: ``(B, H, W, I)`` with ``(B, k, k, I, O)``
    -> ``(1, H, W, B * I)`` with ``(k, k, I, B * O)``, ``feature_group_count=B``."""
    batch, height, width, channels = h.shape
    k1, k2, _, out = kernel.shape[1:]
    lhs = h.transpose(1, 2, 0, 3).reshape(1, height, width, batch * channels)
    rhs = kernel.transpose(1, 2, 3, 0, 4).reshape(k1, k2, channels, batch * out)
    y = lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=batch)  # fmt: skip
    return y.reshape(*y.shape[1:3], batch, out).transpose(2, 0, 1, 3) + bias[:, None, None, :]


def vmapped_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Per-sample kernels through ``jax.vmap`` of ``lax.conv_general_dilated``."""

    def one(h, kernel, bias):
        y = lax.conv_general_dilated(h[None], kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y[0] + bias

    return jax.vmap(one)(h, kernel, bias)


def im2col_conv(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Per-sample kernels as patches + one batched matmul: ``conv_general_dilated_patches``
    (its features ordered ``(I, kh, kw)``) then ``einsum("bhwp,bpo->bhwo")``."""
    k1, k2, channels, out = kernel.shape[1:]
    patches = lax.conv_general_dilated_patches(h, (k1, k2), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    weights = kernel.transpose(0, 3, 1, 2, 4).reshape(kernel.shape[0], channels * k1 * k2, out)
    return jnp.einsum("bhwp,bpo->bhwo", patches, weights) + bias[:, None, None, :]


HAND_CONVS = {"grouped": grouped_conv, "vmap": vmapped_conv, "im2col": im2col_conv}


def make_hand_forward(workload: Workload, layout: HandLayout, conv: str = "grouped",
                      start: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Callable:  # fmt: skip
    """``forward(params, x, condition) -> (B, outputs)``, batched over per-sample weights.
    ``start``: per-element ``(scale, shift)`` vectors of a start map, closed over as
    constants, applied to the ``(B, G)`` vector as ``shift + scale * raw``; ``None``: no map."""
    batched_conv = HAND_CONVS[conv]
    scale, shift = (None, None) if start is None else (jnp.asarray(start[0]), jnp.asarray(start[1]))

    def forward(params: Params, x: jax.Array, condition: jax.Array) -> jax.Array:
        batch = x.shape[0]
        flat = hand_generate(params, condition)
        if scale is not None:
            flat = shift + scale * flat
        pieces = jnp.split(flat, layout.boundaries, axis=1)
        tensors = iter(piece.reshape(batch, *shape) for piece, shape in zip(pieces, layout.shapes))
        h = x
        for layer in workload.layers:
            if layer[0] == "dense":
                bias, kernel = next(tensors), next(tensors)
                h = jnp.einsum("bi,bio->bo", h, kernel) + bias
            elif layer[0] == "conv":
                bias, kernel = next(tensors), next(tensors)
                h = batched_conv(h, kernel, bias)
            elif layer[0] == "relu":
                h = jax.nn.relu(h)
            else:
                h = flatten(h)
        return h

    return forward


# ---------------------------------------------------------------- the hypernetworks


def build_linen(workload: Workload, seed: int = 0) -> Tuple[nn.Module, Params, Dict]:
    """The linen dynamic hypernetwork (default ``init="hyperfan"``), its params (FiLM given
    small random values) and its other collections: the start map, ``{"hypernn": {"start":
    {"scale", "shift"}}}`` (constants, not trained)."""
    hnet = hypernetize(LinenTarget(workload.layers), embedding_dim=workload.embedding_dim,
                       num_embeddings=workload.num_embeddings, condition_dim=workload.condition_dim)  # fmt: skip
    x = jnp.zeros((2, *workload.input_shape))
    c = jnp.zeros((2, workload.condition_dim))
    variables = hnet.init(jax.random.key(seed), x, condition=c)
    assert set(variables) == {"params", "hypernn"}, set(variables)
    assert set(variables["hypernn"]) == {"start"}, "only the start map is written in the twin (no warm start, low rank)"
    params = jax.tree.map(jnp.array, variables["params"])
    assert set(params) == {"condition_module", "embedding_module", "weight_generator"}, set(params)
    film = params["condition_module"]["to_scale_shift"]
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    film["kernel"] = FILM_STD * jax.random.normal(k1, film["kernel"].shape)
    film["bias"] = FILM_STD * jax.random.normal(k2, film["bias"].shape)
    return hnet, params, {"hypernn": variables["hypernn"]}


def build_nnx(workload: Workload, params: Params, seed: int = 0) -> nnx.Module:
    """The NNX dynamic hypernetwork (default ``init="hyperfan"``: its own embedding table,
    folded generator and start map), its FiLM given the values of ``params``' (the linen
    hypernetwork's randomised FiLM)."""
    hnet = hypernetize(build_nnx_target(workload, seed), embedding_dim=workload.embedding_dim,
                       num_embeddings=workload.num_embeddings, condition_dim=workload.condition_dim,
                       rngs=nnx.Rngs(seed + 1))  # fmt: skip
    state = nnx.state(hnet, nnx.Param)
    own = nnx.to_pure_dict(state)
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, params), "NNX params differ"
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.array, {**own, "condition_module": params["condition_module"]}))
    nnx.update(hnet, state)
    return hnet








def linen_forward(hnet: nn.Module, constants: Dict) -> Callable:
    """``forward(params, x, condition)``: ``hnet.apply`` with the other collections (the
    start map) closed over, like the NNX forward's non-``Param`` state and the twins' vectors."""
    return lambda params, x, condition: hnet.apply({**constants, "params": params}, x, condition=condition)


def nnx_pure_forward(hnet: nnx.Module) -> Tuple[Callable, nnx.State]:
    """Split once: ``(forward(params, x, condition), params)`` with the rest closed over."""
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)

    def forward(params, x, condition):
        return nnx.merge(graphdef, params, rest)(x, condition=condition)

    return forward, params


def nnx_plain_forward(hnet: nnx.Module) -> Tuple[Callable, Params]:
    """Like :func:`nnx_pure_forward`, but over a plain dict (``nnx.to_pure_dict``), put back
    into the State inside the trace: a plain dict flattens faster than an ``nnx.State``
    (~15 us less per jitted call here), which matters to a loop of 256 calls per step."""
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)

    def forward(plain, x, condition):
        state = jax.tree.map(lambda v: v, params)  # a fresh State to fill
        nnx.replace_by_pure_dict(state, plain)
        return nnx.merge(graphdef, state, rest)(x, condition=condition)

    return forward, nnx.to_pure_dict(params)


def as_plain(tree: Any) -> Params:
    """NNX State -> plain dict (linen's params tree); plain trees unchanged."""
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


# ---------------------------------------------------------------- training steps


def loss_fn(workload: Workload) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The workload's mean loss: MSE or softmax cross-entropy with integer labels."""
    if workload.loss == "mse":
        return lambda out, target: jnp.mean((out - target) ** 2)
    return lambda out, target: optax.softmax_cross_entropy_with_integer_labels(out, target).mean()


def make_optimizer() -> optax.GradientTransformation:
    return optax.adam(LEARNING_RATE)


def make_pure_step(forward: Callable, tx: optax.GradientTransformation, loss: Callable):
    """``step(params, opt_state, x, c, y) -> (params, opt_state, loss)`` under ``jax.jit``
    (the same wrapper for every pure-function row, so only ``forward`` differs), and the
    loss function ``(params, x, c, y) -> loss``."""

    def objective(params, x, c, y):
        return loss(forward(params, x, c), y)

    @jax.jit
    def step(params, opt_state, x, c, y):
        value, grads = jax.value_and_grad(objective)(params, x, c, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, objective


class PureRunner:
    """A stateful runner around a pure step (``run(batch) -> loss``; ``params()``)."""

    def __init__(self, step, params: Params, tx: optax.GradientTransformation):
        self.step, self.state = step, (jax.tree.map(jnp.array, params), tx.init(params))

    def __call__(self, batch: Batch) -> jax.Array:
        params, opt_state, value = self.step(*self.state, *batch)
        self.state = (params, opt_state)
        return value

    def params(self) -> Params:
        return as_plain(self.state[0])

    def memory(self, batch: Batch) -> Dict[str, int]:
        return compiled_memory(self.step, *self.state, *batch)


class NNXJitRunner:
    """The NNX-tutorial step: ``nnx.jit`` over ``(model, nnx.Optimizer)``, ``nnx.value_and_grad``."""

    def __init__(self, hnet: nnx.Module, loss: Callable):
        self.hnet = hnet
        self.optimizer = nnx.Optimizer(hnet, make_optimizer(), wrt=nnx.Param)

        def step(model, optimizer, x, c, y):
            value, grads = nnx.value_and_grad(lambda m: loss(m(x, condition=c), y))(model)
            optimizer.update(model, grads)
            return value

        self.step = nnx.jit(step)

    def __call__(self, batch: Batch) -> jax.Array:
        return self.step(self.hnet, self.optimizer, *batch)

    def params(self) -> Params:
        return as_plain(nnx.state(self.hnet, nnx.Param))

    def memory(self, batch: Batch) -> Dict[str, int]:
        return compiled_memory(self.step, self.hnet, self.optimizer, *batch)


class LoopRunner:
    """The naive step: a Python loop over samples, one jitted per-sample call each.

    ``sample_forward(params, x_i, c_i)`` runs the hypernetwork with one ``(C,)`` condition
    on ``x_i`` of shape ``(1, ...)``. Per sample: ``grad(params, x, c, y, i)`` (slices sample
    ``i`` inside the jit; loss divided by the batch size, so the sum is the batch mean),
    ``add`` into the running sums; then one ``update`` (Adam).
    """

    def __init__(self, sample_forward: Callable, params: Params, tx: optax.GradientTransformation, loss: Callable):
        def sample_loss(params, x, c, y, i):
            xi, yi = lax.dynamic_slice_in_dim(x, i, 1), lax.dynamic_slice_in_dim(y, i, 1)
            return loss(sample_forward(params, xi, lax.dynamic_index_in_dim(c, i, keepdims=False)), yi) / x.shape[0]

        def update(params, opt_state, grads):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self.grad = jax.jit(jax.value_and_grad(sample_loss))
        self.add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
        self.update = jax.jit(update)
        self.sample_forward = jax.jit(sample_forward)
        self.state = (jax.tree.map(jnp.array, params), tx.init(params))

    def loss_and_grads(self, batch: Batch) -> Tuple[jax.Array, Params]:
        """The loop's summed loss and gradients (the current params)."""
        params = self.state[0]
        total = None
        for i in range(batch[0].shape[0]):
            value = self.grad(params, *batch, i)
            total = value if total is None else self.add(total, value)
        return total

    def __call__(self, batch: Batch) -> jax.Array:
        value, grads = self.loss_and_grads(batch)
        self.state = self.update(*self.state, grads)
        return value

    def outputs(self, batch: Batch) -> jax.Array:
        """Per-sample outputs, concatenated (for the equivalence check)."""
        x, c, _ = batch
        return jnp.concatenate([self.sample_forward(self.state[0], x[i : i + 1], c[i]) for i in range(x.shape[0])])

    def params(self) -> Params:
        return as_plain(self.state[0])

    def memory(self, batch: Batch) -> Dict[str, int]:
        params, opt_state = self.state
        value = self.grad(params, *batch, 0)
        pieces = [compiled_memory(self.grad, params, *batch, 0), compiled_memory(self.add, value, value),
                  compiled_memory(self.update, params, opt_state, value[1])]  # fmt: skip
        return max(pieces, key=lambda m: m["total"])


def compiled_memory(jitted: Any, *args: Any) -> Dict[str, int]:
    """XLA's memory analysis of the compiled function: temp, argument, output bytes, total."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    out = {"temp": analysis.temp_size_in_bytes, "argument": analysis.argument_size_in_bytes,
           "output": analysis.output_size_in_bytes, "alias": analysis.alias_size_in_bytes}  # fmt: skip
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out


# ---------------------------------------------------------------- building everything


@dataclasses.dataclass
class Setup:
    """The implementations' shared pieces: forwards, initial params, the reference layout."""

    workload: Workload
    layout: Any  # hypernn's (linen) layout
    params: Params  # initial values (linen params tree), FiLM randomised
    linen_constants: Dict  # the linen hypernetwork's other collections: {"hypernn": {"start": ...}}
    hyperfan_params: Params  # the NNX hypernetwork's initial values, as a plain dict (the same tree)
    forwards: Dict[str, Callable]  # "hand", "hand_hyperfan", ["hand_im2col", "hand_hyperfan_im2col"], "linen", "nnx"
    nnx_params: nnx.State
    linen_hnet: nn.Module
    fresh_nnx: Callable[[], nnx.Module]
    tx: optax.GradientTransformation
    loss: Callable
    steps: Dict[str, Tuple[Callable, Callable]]  # pure steps and objectives, by forward


def has_conv(workload: Workload) -> bool:
    return any(layer[0] == "conv" for layer in workload.layers)


def build_setup(workload: Workload, hand_conv: str = "grouped") -> Setup:
    """Build both hypernetworks (same initial values) and the hand-written forwards; check the layouts."""
    linen_hnet, params, linen_constants = build_linen(workload)
    hand_layout = HandLayout(workload)
    expected = list(zip(hand_layout.offsets, hand_layout.shapes))
    layout = linen_hnet.layout
    assert [(s.offset, tuple(s.shape)) for s in layout.slots] == expected, "linen layout differs from the hand-written one"
    assert layout.chunk_dim == hand_layout.chunk_dim and layout.num_chunks == workload.num_embeddings

    def fresh_nnx() -> nnx.Module:
        hnet = build_nnx(workload, params)
        assert [(s.offset, tuple(s.shape)) for s in hnet.layout.slots] == expected, "NNX layout differs"
        return hnet

    reference = fresh_nnx()
    start = nnx_start_map(reference, hand_layout.split_sizes)
    linen_start = linen_start_map(linen_constants, hand_layout.split_sizes)
    hyperfan_params = as_plain(nnx.state(reference, nnx.Param))
    nnx_forward, nnx_params = nnx_pure_forward(reference)
    forwards = {"hand": make_hand_forward(workload, hand_layout, hand_conv, linen_start),
                "hand_hyperfan": make_hand_forward(workload, hand_layout, hand_conv, start),
                "linen": linen_forward(linen_hnet, linen_constants), "nnx": nnx_forward}  # fmt: skip
    if has_conv(workload) and hand_conv != "im2col":
        forwards["hand_im2col"] = make_hand_forward(workload, hand_layout, "im2col", linen_start)
        forwards["hand_hyperfan_im2col"] = make_hand_forward(workload, hand_layout, "im2col", start)
    tx, loss = make_optimizer(), loss_fn(workload)
    steps = {name: make_pure_step(forward, tx, loss) for name, forward in forwards.items()}  # jitted lazily
    return Setup(workload, layout, params, linen_constants, hyperfan_params, forwards, nnx_params, linen_hnet, fresh_nnx,
                 tx, loss, steps)  # fmt: skip


def make_runner(setup: Setup, name: str):
    """A fresh runner (own params and Adam state, from the initial values) for ``name``."""
    if name in ("hand", "hand_im2col", "linen"):
        return PureRunner(setup.steps[name][0], setup.params, setup.tx)
    if name in ("hand_hyperfan", "hand_hyperfan_im2col"):
        return PureRunner(setup.steps[name][0], setup.hyperfan_params, setup.tx)
    if name == "nnx":
        _, params = nnx_pure_forward(setup.fresh_nnx())
        return PureRunner(setup.steps["nnx"][0], params, setup.tx)
    if name == "nnx_jit":
        return NNXJitRunner(setup.fresh_nnx(), setup.loss)
    if name == "linen_loop":
        return LoopRunner(linen_forward(setup.linen_hnet, setup.linen_constants), setup.params, setup.tx, setup.loss)
    if name == "nnx_loop":
        forward, params = nnx_plain_forward(setup.fresh_nnx())
        return LoopRunner(forward, params, setup.tx, setup.loss)
    raise ValueError(f"unknown implementation {name!r}")


def make_batches(workload: Workload, count: int, batch: int = BATCH, seed: int = 1) -> List[Batch]:
    """``count`` random batches ``(x, condition, target)``, on device."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal((batch, *workload.input_shape), dtype=np.float32)
        condition = rng.standard_normal((batch, workload.condition_dim), dtype=np.float32)
        if workload.loss == "mse":
            target = rng.standard_normal((batch, workload.outputs), dtype=np.float32)
        else:
            target = rng.integers(0, workload.outputs, batch, dtype=np.int32)
        out.append((jnp.asarray(x), jnp.asarray(condition), jnp.asarray(target)))
    return out


def slice_batch(batch: Batch, samples: int) -> Batch:
    return tuple(t[:samples] for t in batch)  # type: ignore[return-value]


# ---------------------------------------------------------------- equivalence


def assert_close(actual: Any, expected: Any, what: str, rtol: float = 1e-5) -> float:
    """Assert equal trees, with an absolute tolerance relative to each leaf's scale
    (``rtol * max|expected|``: summing in another order moves entries near zero);
    return the largest absolute difference."""
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(as_plain(actual))
    leaves_e, tree_e = jax.tree_util.tree_flatten_with_path(as_plain(expected))
    assert tree_a == tree_e, (what, tree_a, tree_e)
    worst = 0.0
    for (path, a), (_, e) in zip(leaves_a, leaves_e):
        a, e = np.asarray(a), np.asarray(e)
        atol = rtol * max(float(np.abs(e).max()), 1e-3)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what}: {jax.tree_util.keystr(path)} differs")
        worst = max(worst, float(np.abs(a - e).max()))
    return worst


def check_equivalence(setup: Setup, batches: Sequence[Batch], impls: Sequence[str]) -> Tuple[Dict[str, float], Dict]:
    """Assert hypernn == hand-written and loop == hypernn (see the module doc).

    Returns the largest differences and the runners it built, one per implementation in
    ``impls``, left after their (equal) Adam steps: 3 for the batched ones, 1 for the loops.
    """
    diffs: Dict[str, float] = {}
    params = {name: setup.params for name in setup.forwards}
    params.update({"nnx": setup.nnx_params, "hand_hyperfan": setup.hyperfan_params})
    needed = {REFERENCE.get(name, name) for name in impls} | {"hand"}
    needed |= {baseline_of(name) for name in needed}
    evaluate = {name: jax.jit(lambda p, x, c, y, f=setup.forwards[name]: (f(p, x, c), setup.loss(f(p, x, c), y)))
                for name in needed}  # fmt: skip
    gradient = {name: jax.jit(jax.grad(setup.steps[name][1])) for name in needed}
    batch = batches[0]
    flat = hand_generate(setup.params, batch[1][:2])
    assert float(jnp.abs(flat[0] - flat[1]).max()) > 1e-3, "per-sample weights do not depend on the condition"

    hands = sorted({baseline_of(name) for name in needed}, key=IMPLS.index)
    reference = {hand: (*evaluate[hand](params[hand], *batch), gradient[hand](params[hand], *batch)) for hand in hands}
    for name in sorted(needed - set(hands), key=IMPLS.index):
        hand = baseline_of(name)
        out_b, loss_b, grads_b = reference[hand]
        out_h, loss_h = evaluate[name](params[name], *batch)
        diffs[f"{name} out"] = assert_close(out_h, out_b, f"{name} vs {hand}: outputs")
        assert_close(loss_h, loss_b, f"{name} vs {hand}: losses")
        diffs[f"{name} grad"] = assert_close(gradient[name](params[name], *batch), grads_b, f"{name} vs {hand}: gradients")

    batched = [name for name in impls if name not in LOOPS]
    runners = {name: make_runner(setup, name) for name in ("hand", *batched, *{baseline_of(name) for name in batched})}
    compared = [name for name in runners if name not in {"hand", *BASELINES.values()}]  # the baselines themselves: not
    for step in batches[:3]:
        losses = {name: run(step) for name, run in runners.items()}
        for name in compared:
            hand = baseline_of(name)
            assert_close(losses[name], losses[hand], f"{name} vs {hand}: training losses")
    for name in compared:
        hand = baseline_of(name)
        assert_close(runners[name].params(), runners[hand].params(), f"{name} vs {hand}: params after 3 Adam steps", 1e-4)

    def fastest(hand: str) -> str:
        return f"{hand}_im2col" if f"{hand}_im2col" in setup.forwards else hand

    for loop, hyper in LOOPS.items():
        if loop not in impls:
            continue
        runner, few = make_runner(setup, loop), slice_batch(batch, CHECK_SAMPLES)
        out_h, loss_h = evaluate[hyper](params[hyper], *few)
        loss_l, grads_l = runner.loss_and_grads(few)
        diffs[f"{loop} out"] = assert_close(runner.outputs(few), out_h, f"{loop} vs {hyper}: outputs")
        assert_close(loss_l, loss_h, f"{loop} vs {hyper}: losses")
        diffs[f"{loop} grad"] = assert_close(grads_l, gradient[hyper](params[hyper], *few), f"{loop} vs {hyper}: gradients")
        hand = fastest(baseline_of(loop))
        reference_runner = make_runner(setup, hand)
        assert_close(runner(batch), reference_runner(batch), f"{loop} vs {hand}: training losses")
        assert_close(runner.params(), reference_runner.params(), f"{loop} vs {hand}: params after one Adam step", 1e-4)
        runners[loop] = runner
    return diffs, {name: runners[name] for name in impls}


# ---------------------------------------------------------------- timing


def time_steps(run: Runner, batches: Sequence[Batch], steps: int, clock: str = "cpu") -> float:
    """Milliseconds per step over ``steps`` consecutive steps (blocks on the last loss; each
    step depends on the previous one's params)."""
    now = CLOCKS[clock]
    start = now()
    value = None
    for i in range(steps):
        value = run(batches[i % len(batches)])
    jax.block_until_ready(value)
    return (now() - start) * 1e3 / steps


def benchmark_workload(workload: Workload, impls: Sequence[str], args: argparse.Namespace) -> Dict:
    """Check equivalence, measure compiled memory, time the implementations interleaved.

    Steps per round: ``--steps`` for batched rows, fewer for a slow one (about
    ``--round-ms`` per row and round, at least 1); ``--loop-steps`` for the loops. Rounds:
    ``--rounds``, fewer (at least 3) when they would take more than ``--budget`` seconds.
    """
    impls = tuple(name for name in impls if name != "hand_im2col" or (has_conv(workload) and args.hand_conv != "im2col"))
    impls = tuple(name for name in IMPLS if name in {*impls, *map(baseline_of, impls)})  # every row's baseline is timed
    setup = build_setup(workload, args.hand_conv)
    batches = make_batches(workload, 4)
    check, runners = check_equivalence(setup, batches, impls)

    # the loops may run on the first `loop_samples` samples only; their time is scaled by B / n
    loop_samples = min(args.loop_samples, BATCH)
    data = {name: [slice_batch(b, loop_samples) for b in batches] if name in LOOPS else batches for name in impls}
    scale = {name: BATCH / loop_samples if name in LOOPS else 1.0 for name in impls}

    # warm up (compiled already) and size the rounds from the warm step times
    warm, count = {}, {}
    for name in impls:
        warm[name] = time_steps(runners[name], data[name], 1, args.clock)
        if name in LOOPS:
            count[name] = args.loop_steps
            continue
        if args.warmup > 1 and 2 * warm[name] < args.round_ms:  # fast: a better estimate from more steps
            more = max(1, min(args.warmup - 1, round(args.round_ms / max(warm[name], 1e-3))))
            warm[name] = time_steps(runners[name], data[name], more, args.clock)
        count[name] = max(1, min(args.steps, round(args.round_ms / max(warm[name], 1e-3))))
    round_s = sum(warm[name] * count[name] for name in impls) / 1e3
    rounds = max(min(args.rounds, int(args.budget / max(round_s, 1e-9))), min(args.rounds, MIN_ROUNDS))
    memory = {name: runners[name].memory(data[name][0]) for name in impls}

    times: Dict[str, List[float]] = {name: [] for name in impls}
    for r in range(rounds):
        shift = r % len(impls)
        gc.collect()
        for name in impls[shift:] + impls[:shift]:  # rotate which goes first
            times[name].append(time_steps(runners[name], data[name], count[name], args.clock) * scale[name])

    med = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: [h / b for h, b in zip(times[name], times[baseline_of(name)])] for name in impls if name != "hand"}
    speedups = {loop: [s / f for s, f in zip(times[loop], times[hyper])] for loop, hyper in LOOPS.items()
                if loop in impls and hyper in impls}  # fmt: skip
    ratio = {name: statistics.median(values) for name, values in ratios.items()}
    speedup = {loop: statistics.median(values) for loop, values in speedups.items()}
    return {
        "workload": workload.name,
        "model": workload.describe(),
        "embedding_dim": workload.embedding_dim,
        "num_embeddings": workload.num_embeddings,
        "condition_dim": workload.condition_dim,
        "chunk_dim": setup.layout.chunk_dim,
        "target_params": setup.layout.num_params,
        "generated_values": setup.layout.generated_size,
        "batch": BATCH,
        "loss": workload.loss,
        "hand_conv": args.hand_conv if has_conv(workload) else None,
        "clock": args.clock,
        "rounds": rounds,
        "steps_per_round": count,
        "loop_samples": loop_samples,
        "equivalence": check,
        "ms_per_step": times,
        "median_ms_per_step": med,
        "baselines": {name: baseline_of(name) for name in impls},  # "vs hand": vs this hand-written row
        "per_round_ratio_vs_hand": ratios,
        "per_round_speedup_vs_loop": speedups,
        "ratio_vs_hand": ratio,
        "speedup_vs_loop": speedup,
        "xla_memory_bytes": memory,
        "target_ratio": TARGET_RATIO,
        "target_speedup": TARGET_SPEEDUP,
        "ratio_target_met": {name: ratio[name] <= TARGET_RATIO for name in HYPERNETS if name in ratio},
        "speedup_target_met": {loop: value >= TARGET_SPEEDUP for loop, value in speedup.items()},
    }


# ---------------------------------------------------------------- RSS cross-check (subprocesses)


def _proc_status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` value (KiB) from ``/proc/self/status``."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_worker(workload: Workload, impl: str, steps: int, hand_conv: str) -> Dict:
    """In a fresh process: build one implementation, compile and run one step, reset the
    peak-RSS mark (``echo 5 > /proc/self/clear_refs``), run ``steps`` more steps and report
    the peak RSS above the RSS before them."""
    runner = make_runner(build_setup(workload, hand_conv), impl)
    batches = make_batches(workload, 2)
    jax.block_until_ready(runner(batches[0]))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _proc_status_kib("VmRSS")
    value = None
    for i in range(steps):
        value = runner(batches[i % len(batches)])
    jax.block_until_ready(value)
    peak = _proc_status_kib("VmHWM")
    return {"rss_before_kib": before, "peak_rss_kib": peak, "delta_kib": peak - before}


def measure_rss(workload: Workload, impls: Sequence[str], hand_conv: str, steps: int = 3) -> Dict[str, int]:
    """Peak-RSS growth (bytes) of each implementation over ``steps`` warm steps, each in its own subprocess."""
    out = {}
    for impl in impls:
        command = [sys.executable, os.path.abspath(__file__), "--rss-worker", workload.name, impl, str(steps),
                   "--embedding-dim", str(workload.embedding_dim), "--num-embeddings", str(workload.num_embeddings),
                   "--condition-dim", str(workload.condition_dim), "--hand-conv", hand_conv]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        out[impl] = json.loads(result.stdout.strip().splitlines()[-1])["delta_kib"] * 1024
    return out


# ---------------------------------------------------------------- report


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def report(result: Dict) -> str:
    """Human-readable lines (a table) for one workload's result."""
    med, mem, rss = result["median_ms_per_step"], result["xla_memory_bytes"], result.get("rss_delta_bytes")
    samples, batch, steps = result["loop_samples"], result["batch"], result["steps_per_round"]
    loop_note = "" if samples == batch else (f"; loops timed on {samples} samples and scaled x{batch / samples:g}, "
                                             f"their memory is for {samples} samples")  # fmt: skip
    equal = ", ".join(f"{k} {v:.1e}" for k, v in result["equivalence"].items())
    conv = f"; hand-written conv: {result['hand_conv']}" if result["hand_conv"] else ""
    lines = [
        f"workload {result['workload']}: {result['model']}, batch {batch}, {result['loss']} loss; "
        f"D={result['embedding_dim']} E={result['num_embeddings']} C={result['condition_dim']} "
        f"chunk_dim={result['chunk_dim']} ({result['target_params']} target values, {result['generated_values']} "
        f"generated per sample){conv}",
        f"  equal to hand-written (loops: to hypernn, {CHECK_SAMPLES} samples), max |diff|: {equal}; "
        f"params equal after 3 Adam steps (loops: 1)",
        f"  {'implementation':<23} {'ms/step':>9} {'vs hand':>8} {'hypernn speedup':>16} {'XLA step mem':>13} "
        f"{'steps/round':>11}" + (f" {'peak RSS growth':>15}" if rss else ""),
    ]
    for name in med:
        ref = REFERENCE.get(name)
        speed = f"{med[name] / med[ref]:15.2f}x" if ref in med else f"{'-':>16}"
        lines.append(f"  {LABELS[name]:<23} {med[name]:9.3f} {med[name] / med[baseline_of(name)]:7.2f}x {speed} "
                     f"{_mib(mem[name]['total']):>13} {steps[name]:>11}"
                     + (f" {_mib(rss[name]):>15}" if rss else ""))  # fmt: skip
    lines.append(f"  ({result['clock']} time, median of {result['rounds']} interleaved rounds{loop_note}; "
                 f"vs hand: vs {LABELS['hand_hyperfan']} for the NNX rows, {LABELS['hand']} for the others)")  # fmt: skip
    for name in ("linen", "nnx", "nnx_jit", "hand_im2col", "hand_hyperfan"):
        if name not in result["ratio_vs_hand"]:
            continue
        ratios = sorted(result["per_round_ratio_vs_hand"][name])
        line = (f"  {LABELS[name]}/{LABELS[baseline_of(name)]} {result['ratio_vs_hand'][name]:.3f}x (median per-round ratio; "
                f"range {ratios[0]:.3f}-{ratios[-1]:.3f})")  # fmt: skip
        if name in result["ratio_target_met"]:
            line += f"; target <= {result['target_ratio']:.1f}x: {'MET' if result['ratio_target_met'][name] else 'MISSED'}"
        else:
            line += " (informational)"
        lines.append(line)
    for loop, hyper in LOOPS.items():
        if loop not in result["speedup_vs_loop"]:
            continue
        values = sorted(result["per_round_speedup_vs_loop"][loop])
        lines.append(f"  {LABELS[loop]}/{LABELS[hyper]} {result['speedup_vs_loop'][loop]:.2f}x (median per-round; "
                     f"range {values[0]:.2f}-{values[-1]:.2f}); target >= {result['target_speedup']:.0f}x: "
                     f"{'MET' if result['speedup_target_met'][loop] else 'MISSED'}")  # fmt: skip
    if "hand_im2col" in med:
        lines.append(f"  {LABELS['hand_im2col']}/{LABELS['linen']}: hypernn is {med['linen'] / med['hand_im2col']:.0f}x "
                     f"slower than a hand-written im2col conv (ratio of medians)")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time a jitted training step (batch 256) of a dynamic, per-sample JAX hypernetwork (hypernn; "
        "linen and NNX) against a hand-written batched implementation of the same math (target: <= 1.2x its "
        "time) and a Python loop over samples (target: >= 10x faster), for an MLP 32-64-32 and a small CNN; "
        "report XLA's memory analysis of each compiled step.",
    )
    parser.add_argument("--workload", choices=tuple(WORKLOADS), nargs="+", default=list(WORKLOADS),
                        help="which target models (default: mlp cnn)")
    parser.add_argument("--embedding-dim", type=int, metavar="D",
                        help="override the hypernetwork's embedding width (mlp: 32, cnn: 32)")
    parser.add_argument("--num-embeddings", type=int, metavar="E",
                        help="override the number of chunk embeddings (mlp: 64, cnn: 32)")
    parser.add_argument("--condition-dim", type=int, metavar="C", help="override the condition width (16)")
    parser.add_argument("--framework", choices=("linen", "nnx", "both"), default="both",
                        help="which hypernetworks (and loops) to time (default: both)")
    parser.add_argument("--nnx", choices=("pure", "jit", "both"), default="both",
                        help="NNX step style(s): pure = nnx.split once + jax.jit over the Param State; jit = "
                        "nnx.jit + nnx.Optimizer (informational) (default: both)")
    parser.add_argument("--hand-conv", choices=tuple(HAND_CONVS), default="im2col",
                        help="the hand-written per-sample convolution: one grouped conv (feature_group_count=B), "
                        "jax.vmap of lax.conv_general_dilated, or patches + batched matmul (im2col); unless im2col, an "
                        "informational im2col row is added (default: im2col, what hypernn runs per sample)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="timed rounds per workload, at most (default: 15; see --budget)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed rounds per workload: fewer rounds (at least 3) when --rounds would "
                        "take longer (default: 20)")
    parser.add_argument("--steps", type=int, default=20, help="batched steps per round, at most (default: 20)")
    parser.add_argument("--round-ms", type=float, default=100.0,
                        help="a slow batched row runs fewer steps per round, about this many ms (default: 100)")
    parser.add_argument("--loop-steps", type=int, default=1, help="steps per round of each loop (default: 1)")
    parser.add_argument("--loop-samples", type=int, default=BATCH,
                        help=f"time the loops on the first N samples and scale by {BATCH}/N (default: {BATCH}, "
                        "the whole batch, no scaling)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps after the equivalence check's (one for a row slower than --round-ms / 2; "
                        "they also size the rounds) (default: 10)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: process CPU time (default; ignores time preempted by other processes); wall: "
                        "elapsed (use wall on an accelerator)")
    parser.add_argument("--rss", action="store_true",
                        help="also measure each implementation's peak-RSS growth over 3 warm steps in its own "
                        "subprocess (Linux; a few seconds per implementation, minutes with a grouped conv)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--rss-worker", nargs=3, metavar=("WORKLOAD", "IMPL", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    if args.loop_steps < 1 or args.budget <= 0 or args.round_ms <= 0:
        parser.error("--loop-steps must be >= 1, --budget and --round-ms > 0")
    if not CHECK_SAMPLES <= args.loop_samples <= BATCH:
        parser.error(f"--loop-samples must lie in [{CHECK_SAMPLES}, {BATCH}]")
    for option in ("embedding_dim", "num_embeddings", "condition_dim"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    return args


def workload_for(name: str, args: argparse.Namespace) -> Workload:
    """The named workload with the command line's size overrides."""
    overrides = {k: getattr(args, k) for k in ("embedding_dim", "num_embeddings", "condition_dim")}
    return dataclasses.replace(WORKLOADS[name], **{k: v for k, v in overrides.items() if v is not None})


def selected_impls(args: argparse.Namespace) -> Tuple[str, ...]:
    """The rows to time, in report order (``hand_im2col`` is dropped later for a model without conv)."""
    keep = {"hand", "hand_im2col"}  # (and every row's baseline: benchmark_workload adds it)
    if args.framework in ("linen", "both"):
        keep |= {"linen", "linen_loop"}
    if args.framework in ("nnx", "both"):
        keep |= {"nnx_jit"} if args.nnx == "jit" else {"nnx", "nnx_loop"} | ({"nnx_jit"} if args.nnx == "both" else set())
    return tuple(name for name in IMPLS if name in keep)


def main(argv=None) -> int:
    """Run every workload, print the report, optionally write JSON; exit 0 (timing is informational)."""
    args = parse_args(argv)
    if args.rss_worker:
        name, impl, steps = args.rss_worker
        print(json.dumps(rss_worker(workload_for(name, args), impl, int(steps), args.hand_conv)))
        return 0
    impls = selected_impls(args)
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, {device.platform} "
          f"({device.device_kind}), {platform.machine()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"batch {BATCH}, adam; XLA step mem: temp + argument + output bytes of the compiled step "
          f"(memory_analysis; loops: their largest jitted piece)", flush=True)  # fmt: skip
    results = []
    for name in args.workload:
        workload = workload_for(name, args)
        result = benchmark_workload(workload, impls, args)
        if args.rss:
            result["rss_delta_bytes"] = measure_rss(workload, [n for n in impls if n in result["median_ms_per_step"]],
                                                    args.hand_conv)  # fmt: skip
        print(report(result), flush=True)
        results.append(result)
    if args.json:
        meta = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                "python": sys.version.split()[0], "device": f"{device.platform} ({device.device_kind})",
                "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch": BATCH, "machine": platform.machine()}  # fmt: skip
        write_json(args.json, meta, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
