"""Time one training step of a *dynamic* (per-sample) hypernetwork against two baselines.

A dynamic hypernetwork generates one weight set per sample from that sample's condition:
``hnet = hypernetize(model, embedding_dim=D, num_embeddings=E, condition_dim=C)``, then
``hnet(x, condition=c)`` with ``c`` of shape ``(B, C)`` runs sample ``i`` with weight set
``i``. The default conditioning is FiLM: ``emb_i = E_table * (1 + scale(c_i)) + shift(c_i)``
(``scale``/``shift`` from one ``nn.Linear(C, 2D)``), then the linear generator maps every
chunk embedding to ``chunk_dim`` values; the ``(B, E * chunk_dim)`` result is cut into the
model's tensors (global layout: weight then bias per layer, end to end, padding last).

Two target models (workloads), batch 256:

* ``mlp``: ``Linear(32, 64), ReLU, Linear(64, 32)``, MSE loss against a random target;
* ``cnn``: ``Conv2d(3, 8, 3), ReLU, Conv2d(8, 8, 3), ReLU, Flatten, Linear(128, 10)`` on
  ``3x8x8`` inputs, cross-entropy loss.

Four implementations of the same math, each timed on one training step (forward, loss,
backward, ``Adam.step()``, ``zero_grad()``):

* ``hypernn``: the :func:`hypernn.hypernetize` dynamic hypernetwork (batched per-sample
  weights through its ``PerSampleRunner``: ``baddbmm`` for Linear, grouped conv for Conv2d);
* ``hand``: a hand-written batched module: the same embedding table, FiLM linear and
  generator (initial values copied from the hypernetwork), hypernn's default ``hyperfan``
  start map (per-element scale and shift vectors copied from the hypernetwork,
  ``shift + scale * raw`` over the ``(B, G)`` vector), one ``torch.split`` of the
  ``(B, G)`` vector at the layout offsets (computed here from the layer sizes and checked
  against hypernn's layout), ``torch.baddbmm`` for Linear and one grouped ``F.conv2d``
  (bias included) for Conv2d. Target: hypernn at most 1.2x its time;
* ``loop``: the naive implementation, a Python loop over samples: for each sample,
  generate its weights from its condition (same FiLM, generator, start map and split, unbatched)
  and run ``F.linear``/``F.conv2d`` on ``x[i:i+1]``; the outputs are concatenated and one
  loss/backward/Adam step follows. Target: hypernn at least 10x faster than this loop;
* ``hnet_loop`` (informational): the same loop written with hypernn itself, a copy of the
  hypernetwork called per sample, ``hnet(x[i:i+1], condition=c[i])`` (one ``(C,)``
  condition: one weight set through ``functional_call``): what a user without batched
  per-sample support would write; slower than ``loop`` by hypernn's per-call overhead.

``--loop-samples N`` times both loops on the first ``N`` samples only and scales their time
by ``B / N``; the default runs the whole batch, unscaled (one loop step per round).

The generation cost is intrinsic: ``B * E * chunk_dim * D`` multiply-adds forward and
twice that backward, the same in every implementation (the loop does it in ``B`` small
matmuls); ``--embedding-dim``/``--num-embeddings``/``--condition-dim`` override the
hypernetwork sizes (defaults: mlp ``D=32, E=64, C=16``; cnn ``D=32, E=32, C=16``).

Before timing, the script asserts that hypernn and the hand-written module give the same
outputs, loss and gradients (all five trained tensors) and the same parameters after 3
Adam steps, and that both loops give the same outputs and gradients on the first 8 samples.
FiLM is zero-initialised by hypernn (every sample would get the same weights), so the
benchmark gives its linear small random values first, so that the check compares truly
per-sample weights.

Timing interleaves the implementations round by round (rotating the order) and reports
medians, the hypernn/hand-written ratio and the loop/hypernn speedups as medians of
per-round ratios (table columns "vs hand" and "hypernn speedup" are ratios of medians). Time is process CPU time (torch pinned to one thread) by default, so
other processes on a shared machine do not count; ``--clock wall`` for elapsed time.

Peak memory, per implementation: the peak of *live torch tensor bytes* during one
(warmed-up) training step above what is live when the step starts (parameters, Adam state
and data), from the allocation and free events that ``torch.profiler`` records with
``profile_memory=True`` (summed in time order; the maximum of the running sum). It counts
exactly what torch's CPU allocator hands out (activations, generated weights, gradients,
temporaries), independent of malloc caching and fragmentation and of what other
implementations in the same process did before. ``--rss`` adds a cross-check (Linux):
each implementation runs in a fresh subprocess, which resets its peak-RSS mark
(``/proc/self/clear_refs``) after building, runs 3 steps and reports the peak RSS
(``VmHWM``) above the RSS before them. Coarser: it includes malloc's caching and
fragmentation, first-call initialisation and Adam's state, and misses memory that malloc
had already kept from construction. (``getrusage``'s ``ru_maxrss`` cannot be used: it is
the high-water mark of the whole process, set by imports and construction, and a step
that peaks ~10 MiB above the resting RSS does not move it.)

Usage::

    python benchmarks/torch_dynamic_step.py                 # both workloads, ~1 min
    python benchmarks/torch_dynamic_step.py --workload cnn --rounds 21 --rss
    python benchmarks/torch_dynamic_step.py --workload mlp --embedding-dim 8
    python benchmarks/torch_dynamic_step.py --json /tmp/dynamic.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import dataclasses
import gc
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hypernn import hypernetize
from common import CLOCKS, write_json
from twins import StartMapMixin, copy_start_map

TARGET_RATIO = 1.2  # hypernn / hand-written, at most
TARGET_SPEEDUP = 10.0  # loop / hypernn, at least
BATCH = 256
IMPLS = ("hypernn", "hand", "loop", "hnet_loop")
LOOPS = ("loop", "hnet_loop")
LABELS = {"hypernn": "hypernn", "hand": "hand-written", "loop": "python loop", "hnet_loop": "loop of hnet"}

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x, condition, target)
Layer = Tuple  # ("linear", in, out) | ("conv", in, out, kernel) | ("relu",) | ("flatten",)


# ---------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Workload:
    """A target model, its data and the hypernetwork's sizes."""

    name: str
    layers: Tuple[Layer, ...]
    input_shape: Tuple[int, ...]  # one sample's
    loss: str  # "mse" (target of the output's shape) or "ce" (integer labels)
    outputs: int
    embedding_dim: int
    num_embeddings: int
    condition_dim: int

    def describe(self) -> str:
        """``Linear(32,64)-ReLU-...`` for the report."""
        names = {"linear": "Linear", "conv": "Conv2d", "relu": "ReLU", "flatten": "Flatten"}
        return "-".join(names[layer[0]] + (f"({','.join(map(str, layer[1:]))})" if len(layer) > 1 else "")
                        for layer in self.layers)  # fmt: skip


WORKLOADS = {
    "mlp": Workload("mlp", (("linear", 32, 64), ("relu",), ("linear", 64, 32)), (32,), "mse", 32,
                    embedding_dim=32, num_embeddings=64, condition_dim=16),
    "cnn": Workload("cnn", (("conv", 3, 8, 3), ("relu",), ("conv", 8, 8, 3), ("relu",), ("flatten",),
                            ("linear", 128, 10)), (3, 8, 8), "ce", 10,
                    embedding_dim=32, num_embeddings=32, condition_dim=16),
}  # fmt: skip


def build_model(workload: Workload) -> nn.Sequential:
    """The target model as plain torch modules."""
    make = {
        "linear": lambda _, i, o: nn.Linear(i, o),
        "conv": lambda _, i, o, k: nn.Conv2d(i, o, k),
        "relu": lambda _: nn.ReLU(),
        "flatten": lambda _: nn.Flatten(),
    }
    return nn.Sequential(*(make[layer[0]](*layer) for layer in workload.layers))


def parameter_shapes(layers: Sequence[Layer]) -> List[Tuple[int, ...]]:
    """Weight then bias shape of every Linear/Conv2d, in order (the global layout's order)."""
    shapes: List[Tuple[int, ...]] = []
    for layer in layers:
        if layer[0] == "linear":
            shapes += [(layer[2], layer[1]), (layer[2],)]
        elif layer[0] == "conv":
            shapes += [(layer[2], layer[1], layer[3], layer[3]), (layer[2],)]
    return shapes


# ---------------------------------------------------------------- the implementations


def build_hypernet(workload: Workload, seed: int = 0) -> nn.Module:
    """``hypernetize`` the model dynamically; FiLM given small random values (see module doc)."""
    torch.manual_seed(seed)
    hnet = hypernetize(build_model(workload), embedding_dim=workload.embedding_dim,
                       num_embeddings=workload.num_embeddings, condition_dim=workload.condition_dim)  # fmt: skip
    with torch.no_grad():
        film = hnet.condition_module.to_scale_shift
        film.weight.normal_(0.0, 0.1)
        film.bias.normal_(0.0, 0.1)
    return hnet


def batched_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h_i W_i^T + b_i`` for every sample: one ``baddbmm`` (``h`` is ``(B, in)``)."""
    return torch.baddbmm(bias.unsqueeze(1), h.unsqueeze(1), weight.transpose(1, 2)).squeeze(1)


def batched_conv2d(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-sample kernels as one grouped convolution over ``(1, B * C_in, H, W)``."""
    batch, out_channels = weight.shape[:2]
    merged = h.reshape(1, batch * h.shape[1], *h.shape[2:])
    out = F.conv2d(merged, weight.reshape(batch * out_channels, *weight.shape[2:]), bias.reshape(-1), groups=batch)
    return out.view(batch, out_channels, *out.shape[2:])


class HandWrittenDynamic(StartMapMixin, nn.Module):
    """The dynamic hypernetwork written by hand, batched over samples.

    FiLM (``E * (1 + scale) + shift`` from one ``nn.Linear(C, 2D)``), the linear generator,
    the start map (:class:`twins.StartMapMixin`, set by ``copy_start_map``), one ``torch.split`` of the ``(B, G)`` vector at the offsets of ``parameter_shapes``
    (plus the padding at the end), ``view`` to ``(B, *shape)``, then ``baddbmm`` /
    grouped ``conv2d`` / ``relu`` / ``flatten``.
    """

    def __init__(self, workload: Workload):
        super().__init__()
        self.layers = workload.layers
        self.shapes = parameter_shapes(workload.layers)
        self.offsets = tuple(itertools.accumulate((math.prod(s) for s in self.shapes), initial=0))
        total = self.offsets[-1]
        chunk_dim = math.ceil(total / workload.num_embeddings)
        padding = workload.num_embeddings * chunk_dim - total
        self.split_sizes = tuple(math.prod(s) for s in self.shapes) + ((padding,) if padding else ())
        self.embedding = nn.Embedding(workload.num_embeddings, workload.embedding_dim)
        self.film = nn.Linear(workload.condition_dim, 2 * workload.embedding_dim)
        self.generator = nn.Linear(workload.embedding_dim, chunk_dim)
        self.register_buffer("index", torch.arange(workload.num_embeddings), persistent=False)
        self._no_start_map()

    def generate(self, condition: torch.Tensor) -> torch.Tensor:
        """Flat generated vector(s): ``(B, G)`` for ``(B, C)`` conditions, ``(G,)`` for ``(C,)``."""
        scale, shift = self.film(condition).unsqueeze(-2).chunk(2, dim=-1)
        embedding = self.embedding(self.index) * (1 + scale) + shift
        return self.start_map(self.generator(embedding).flatten(-2))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        pieces = torch.split(self.generate(condition), self.split_sizes, dim=1)
        tensors = iter(piece.view(batch, *shape) for piece, shape in zip(pieces, self.shapes))
        h = x
        for layer in self.layers:
            if layer[0] == "linear":
                h = batched_linear(h, next(tensors), next(tensors))
            elif layer[0] == "conv":
                h = batched_conv2d(h, next(tensors), next(tensors))
            elif layer[0] == "relu":
                h = F.relu(h)
            else:
                h = h.flatten(1)
        return h


class LoopDynamic(HandWrittenDynamic):
    """The naive implementation: a Python loop over samples, one weight set at a time."""

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.one_sample(x[i : i + 1], condition[i]) for i in range(x.shape[0])])

    def one_sample(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Generate the weights of one condition ``(C,)`` and run the model on ``x`` (``(1, ...)``)."""
        pieces = torch.split(self.generate(condition), self.split_sizes)
        tensors = iter(piece.view(shape) for piece, shape in zip(pieces, self.shapes))
        h = x
        for layer in self.layers:
            if layer[0] == "linear":
                h = F.linear(h, next(tensors), next(tensors))
            elif layer[0] == "conv":
                h = F.conv2d(h, next(tensors), next(tensors))
            elif layer[0] == "relu":
                h = F.relu(h)
            else:
                h = h.flatten(1)
        return h


class HypernnLoop(nn.Module):
    """The naive loop written with hypernn: ``hnet(x[i:i+1], condition=c[i])`` per sample
    (one ``(C,)`` condition: one weight set, run through ``functional_call``)."""

    def __init__(self, hnet: nn.Module):
        super().__init__()
        self.hnet = hnet

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.hnet(x[i : i + 1], condition=condition[i]) for i in range(x.shape[0])])


PARAMETER_NAMES = ("embedding.weight", "film.weight", "film.bias", "generator.weight", "generator.bias")


def trained_tensors(model: nn.Module) -> List[torch.Tensor]:
    """The five trained tensors of any implementation, in ``PARAMETER_NAMES`` order."""
    if isinstance(model, HypernnLoop):
        return trained_tensors(model.hnet)
    if isinstance(model, HandWrittenDynamic):
        film, embedding, generator = model.film, model.embedding, model.generator
    else:
        film, embedding, generator = model.condition_module.to_scale_shift, model.embedding_module, model.weight_generator
    tensors = [embedding.weight, film.weight, film.bias, generator.weight, generator.bias]
    assert len(list(model.parameters())) == len(tensors), "the model has other trained tensors"
    return tensors


def build_all(workload: Workload, impls: Sequence[str] = IMPLS) -> Dict[str, nn.Module]:
    """The implementations, all starting from the hypernetwork's values (layout checked)."""
    hnet = build_hypernet(workload)
    hand = HandWrittenDynamic(workload)
    expected = list(zip(hand.offsets, map(tuple, hand.shapes)))
    assert [(s.offset, tuple(s.shape)) for s in hnet.layout.slots] == expected, "layouts differ"
    assert hand.generator.out_features == hnet.layout.chunk_dim
    makers = {"hypernn": lambda: hnet, "hand": lambda: hand, "loop": lambda: LoopDynamic(workload),
              "hnet_loop": lambda: HypernnLoop(copy.deepcopy(hnet))}  # fmt: skip
    models = {name: makers[name]() for name in impls}
    with torch.no_grad():
        for model in models.values():
            for source, target in zip(trained_tensors(hnet), trained_tensors(model)):
                if target is not source:
                    target.copy_(source)
    for model in models.values():
        if isinstance(model, StartMapMixin):
            copy_start_map(hnet, model)
    return models


# ---------------------------------------------------------------- training step


def make_batches(workload: Workload, count: int, batch: int = BATCH, seed: int = 1) -> List[Batch]:
    """``count`` random batches ``(x, condition, target)``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(batch, *workload.input_shape, generator=generator)
        condition = torch.randn(batch, workload.condition_dim, generator=generator)
        if workload.loss == "mse":
            target = torch.randn(batch, workload.outputs, generator=generator)
        else:
            target = torch.randint(0, workload.outputs, (batch,), generator=generator)
        out.append((x, condition, target))
    return out


def loss_fn(workload: Workload) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The workload's loss: ``F.mse_loss`` or ``F.cross_entropy``."""
    return F.mse_loss if workload.loss == "mse" else F.cross_entropy


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer every implementation uses (Adam, defaults but lr)."""
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, loss: Callable) -> torch.Tensor:
    """One step: forward, loss, backward, Adam step, zero_grad. Returns the loss."""
    x, condition, target = batch
    value = loss(model(x, condition=condition), target)
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value


# ---------------------------------------------------------------- equivalence


def _forward_backward(model: nn.Module, params: Sequence[torch.Tensor], batch: Batch, loss: Callable) -> Tuple:
    """Output, loss and the gradients of ``params`` of one forward/backward."""
    x, condition, target = batch
    out = model(x, condition=condition)
    value = loss(out, target)
    return out.detach(), value.detach(), torch.autograd.grad(value, list(params))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str, rtol: float = 1e-5) -> None:
    """``torch.testing.assert_close`` with an absolute tolerance relative to the tensor's
    scale (``rtol * max|expected|``): outputs reach the hundreds with hypernn's default
    initialisation, and summing in another order moves entries near zero by ~1e-5."""
    atol = rtol * max(float(expected.detach().abs().max()), 1e-3)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)


def check_equivalence(models: Dict[str, nn.Module], batches: Sequence[Batch], workload: Workload,
                      loop_samples: int = 8) -> Dict:  # fmt: skip
    """Assert hypernn == hand-written (outputs, loss, gradients; parameters after 3 Adam
    steps) and hypernn == loop (outputs, loss, gradients) on the first ``loop_samples``
    samples. The models are left after 3 (equal) Adam steps. Returns the largest differences."""
    hnet, hand = models["hypernn"], models["hand"]
    loss = loss_fn(workload)
    diffs: Dict[str, float] = {}

    def compare(other: str, batch: Batch) -> None:
        out_h, loss_h, grads_h = _forward_backward(hnet, trained_tensors(hnet), batch, loss)
        out_o, loss_o, grads_o = _forward_backward(models[other], trained_tensors(models[other]), batch, loss)
        label = f"hypernn vs {other}"
        assert_close(out_o, out_h, f"{label}: outputs differ")
        assert_close(loss_o, loss_h, f"{label}: losses differ")
        for name, g_h, g_o in zip(PARAMETER_NAMES, grads_h, grads_o):
            assert_close(g_o, g_h, f"{label}: gradients of {name} differ")
        diffs[f"{other}: max|out diff|"] = (out_h - out_o).abs().max().item()
        diffs[f"{other}: max|grad diff|"] = max((g_h - g_o).abs().max().item() for g_h, g_o in zip(grads_h, grads_o))

    for name in LOOPS:
        if name in models:
            compare(name, tuple(t[:loop_samples] for t in batches[0]))  # type: ignore[arg-type]
    compare("hand", batches[0])
    flat, _ = hnet.generate_params(condition=batches[0][1][:2])
    assert (flat[0] - flat[1]).abs().max() > 1e-3, "per-sample weights do not depend on the condition"

    opt_h, opt_b = make_optimizer(hnet), make_optimizer(hand)
    for batch in batches[:3]:
        lh, lb = train_step(hnet, opt_h, batch, loss), train_step(hand, opt_b, batch, loss)
        assert_close(lb, lh, "training losses differ")
    for name, p_h, p_b in zip(PARAMETER_NAMES, trained_tensors(hnet), trained_tensors(hand)):
        assert_close(p_b, p_h, f"{name} differs after 3 Adam steps", rtol=1e-4)
    return diffs


# ---------------------------------------------------------------- timing and memory


def time_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Batch], steps: int,
               loss: Callable, clock: str = "cpu") -> float:  # fmt: skip
    """Milliseconds per step over ``steps`` consecutive training steps.

    ``clock="cpu"`` counts this process's CPU time (single-threaded torch: the work done,
    not time preempted by other processes); ``"wall"`` counts elapsed time.
    """
    now = CLOCKS[clock]
    start = now()
    for i in range(steps):
        train_step(model, optimizer, batches[i % len(batches)], loss)
    return (now() - start) * 1e3 / steps


def peak_step_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, loss: Callable) -> int:
    """Peak live torch tensor bytes during one training step, above those live at its start.

    From ``torch.profiler``'s allocation/free events (``profile_memory=True``), summed in
    time order. Call after a warm-up step, so that Adam's state already exists.
    """
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, optimizer, batch, loss)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]  # fmt: skip
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return peak


def _slice_batches(batches: Sequence[Batch], samples: int) -> List[Batch]:
    return [tuple(t[:samples] for t in batch) for batch in batches]  # type: ignore[misc]


def benchmark_workload(workload: Workload, rounds: int, steps: int, loop_steps: int, warmup: int,
                       loop_samples: int, clock: str = "cpu") -> Dict:  # fmt: skip
    """Check equivalence, measure peak memory, time the implementations interleaved."""
    models = build_all(workload)
    batches = make_batches(workload, 4)
    check = check_equivalence(models, batches, workload)
    loss = loss_fn(workload)

    # the loops may run on the first `loop_samples` samples only; their time is scaled by B / n
    loop_samples = min(loop_samples, BATCH)
    data = {name: _slice_batches(batches, loop_samples) if name in LOOPS else batches for name in IMPLS}
    scale = {name: BATCH / loop_samples if name in LOOPS else 1.0 for name in IMPLS}
    count = {name: loop_steps if name in LOOPS else steps for name in IMPLS}

    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    for name in IMPLS:
        time_steps(models[name], optimizers[name], data[name], 1 if name in LOOPS else max(1, warmup), loss)
    memory = {name: peak_step_bytes(models[name], optimizers[name], data[name][0], loss) for name in IMPLS}

    times: Dict[str, List[float]] = {name: [] for name in IMPLS}
    for r in range(rounds):
        shift = r % len(IMPLS)
        gc.collect()
        for name in IMPLS[shift:] + IMPLS[:shift]:  # rotate which goes first
            ms = time_steps(models[name], optimizers[name], data[name], count[name], loss, clock)
            times[name].append(ms * scale[name])

    med = {name: statistics.median(values) for name, values in times.items()}
    ratios = [h / b for h, b in zip(times["hypernn"], times["hand"])]
    speedups = {loop: [slow / fast for slow, fast in zip(times[loop], times["hypernn"])] for loop in LOOPS}
    ratio = statistics.median(ratios)
    speedup = {loop: statistics.median(values) for loop, values in speedups.items()}
    layout = models["hypernn"].layout
    return {
        "workload": workload.name,
        "model": workload.describe(),
        "embedding_dim": workload.embedding_dim,
        "num_embeddings": workload.num_embeddings,
        "condition_dim": workload.condition_dim,
        "chunk_dim": layout.chunk_dim,
        "target_params": layout.num_params,
        "generated_values": layout.generated_size,
        "batch": BATCH,
        "loss": workload.loss,
        "clock": clock,
        "rounds": rounds,
        "steps_per_round": count,
        "loop_samples": loop_samples,
        "equivalence": check,
        "ms_per_step": times,
        "median_ms_per_step": med,
        "per_round_ratio_vs_hand": ratios,
        "per_round_speedup_vs": speedups,
        "ratio_vs_hand": ratio,
        "speedup_vs": speedup,
        "peak_step_bytes": memory,
        "target_ratio": TARGET_RATIO,
        "target_speedup": TARGET_SPEEDUP,
        "ratio_target_met": ratio <= TARGET_RATIO,
        "speedup_target_met": speedup["loop"] >= TARGET_SPEEDUP,
    }


# ---------------------------------------------------------------- RSS cross-check (subprocesses)


def _proc_status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` value (KiB) from ``/proc/self/status``."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_worker(workload: Workload, impl: str, steps: int) -> Dict:
    """In a fresh process: build one implementation, reset the peak-RSS mark, run ``steps``
    training steps (the first included) and report the peak RSS above the RSS before them.

    Linux: ``echo 5 > /proc/self/clear_refs`` resets ``VmHWM`` (the peak RSS) to the current
    RSS, so earlier peaks (imports, construction) do not hide the steps' peak, as they do
    with ``getrusage``'s ``ru_maxrss``, a high-water mark over the whole process life.
    """
    model = build_all(workload, ("hypernn", "hand", impl) if impl not in ("hypernn", "hand") else (impl, "hand"))[impl]
    batches = make_batches(workload, 2)
    optimizer, loss = make_optimizer(model), loss_fn(workload)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _proc_status_kib("VmRSS")
    for i in range(steps):
        train_step(model, optimizer, batches[i % len(batches)], loss)
    peak = _proc_status_kib("VmHWM")
    return {"rss_before_kib": before, "peak_rss_kib": peak, "delta_kib": peak - before}


def measure_rss(workload: Workload, steps: int = 3) -> Dict[str, int]:
    """Peak-RSS growth (bytes) of each implementation over its first steps, each in its own subprocess."""
    out = {}
    for impl in IMPLS:
        command = [sys.executable, os.path.abspath(__file__), "--rss-worker", workload.name, impl, str(steps),
                   "--embedding-dim", str(workload.embedding_dim), "--num-embeddings", str(workload.num_embeddings),
                   "--condition-dim", str(workload.condition_dim)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        out[impl] = json.loads(result.stdout.strip().splitlines()[-1])["delta_kib"] * 1024
    return out


# ---------------------------------------------------------------- report


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def report(result: Dict) -> str:
    """Human-readable lines (a table) for one workload's result."""
    med, mem, rss = result["median_ms_per_step"], result["peak_step_bytes"], result.get("rss_delta_bytes")
    ratios = sorted(result["per_round_ratio_vs_hand"])
    speedups = sorted(result["per_round_speedup_vs"]["loop"])
    samples, batch = result["loop_samples"], result["batch"]
    loop_note = "" if samples == batch else (f", loops timed on {samples} samples and scaled x{batch / samples:g}; "
                                             f"their memory is for {samples} samples, unscaled")  # fmt: skip
    steps = result["steps_per_round"]
    lines = [
        f"workload {result['workload']}: {result['model']}, batch {batch}, {result['loss']} loss; "
        f"D={result['embedding_dim']} E={result['num_embeddings']} C={result['condition_dim']} "
        f"chunk_dim={result['chunk_dim']} ({result['target_params']} target values, {result['generated_values']} "
        f"generated per sample)",
        "  equal: " + ", ".join(f"{k} {v:.1e}" for k, v in result["equivalence"].items())
        + "; hand: params equal after 3 Adam steps",
        f"  {'implementation':<14} {'ms/step':>9} {'vs hand':>8} {'hypernn speedup':>16} {'peak step mem':>14}"
        + (f" {'peak RSS growth':>15}" if rss else ""),
    ]
    for name in IMPLS:
        lines.append(
            f"  {LABELS[name]:<14} {med[name]:9.3f} {med[name] / med['hand']:7.2f}x {med[name] / med['hypernn']:15.2f}x "
            f"{_mib(mem[name]):>14}" + (f" {_mib(rss[name]):>15}" if rss else "")
        )
    lines += [
        f"  ({result['clock']} time, median of {result['rounds']} rounds; steps/round: "
        f"{steps['hypernn']} batched, {steps['loop']} per loop{loop_note})",
        f"  hypernn/hand-written {result['ratio_vs_hand']:.3f}x (median per-round ratio; range "
        f"{ratios[0]:.3f}-{ratios[-1]:.3f}); target <= {result['target_ratio']:.1f}x: "
        f"{'MET' if result['ratio_target_met'] else 'MISSED'}",
        f"  python loop/hypernn {result['speedup_vs']['loop']:.1f}x (median per-round; range "
        f"{speedups[0]:.1f}-{speedups[-1]:.1f}); target >= {result['target_speedup']:.0f}x: "
        f"{'MET' if result['speedup_target_met'] else 'MISSED'}  (loop of hnet/hypernn "
        f"{result['speedup_vs']['hnet_loop']:.1f}x; hand-written/python loop {med['loop'] / med['hand']:.1f}x)",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Time a training step (batch 256) of a dynamic, per-sample hypernetwork (hypernn) against a "
        "hand-written batched implementation of the same math (target: <= 1.2x its time) and a Python loop over "
        "samples (target: >= 10x faster), for an MLP 32-64-32 and a small CNN; report peak memory.",
    )
    parser.add_argument("--workload", choices=tuple(WORKLOADS), nargs="+", default=list(WORKLOADS),
                        help="which target models (default: mlp cnn)")
    parser.add_argument("--embedding-dim", type=int, metavar="D",
                        help="override the hypernetwork's embedding width (mlp: 32, cnn: 32)")
    parser.add_argument("--num-embeddings", type=int, metavar="E",
                        help="override the number of chunk embeddings (mlp: 64, cnn: 32)")
    parser.add_argument("--condition-dim", type=int, metavar="C", help="override the condition width (16)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per workload (default: 15)")
    parser.add_argument("--steps", type=int, default=10, help="hypernn/hand-written steps per round (default: 10)")
    parser.add_argument("--loop-steps", type=int, default=1, help="steps per round of each loop (default: 1)")
    parser.add_argument("--loop-samples", type=int, default=BATCH,
                        help=f"time the loops on the first N samples and scale by {BATCH}/N (default: {BATCH}, "
                        "the whole batch, no scaling)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warmup steps (loops: 1) (default: 10)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: process CPU time (default; ignores time preempted by other processes); wall: elapsed")
    parser.add_argument("--rss", action="store_true",
                        help="also measure each implementation's peak-RSS growth over 3 steps in its own subprocess "
                        "(Linux; ~3-5 s per implementation)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--rss-worker", nargs=3, metavar=("WORKLOAD", "IMPL", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.loop_steps < 1 or args.warmup < 0:
        parser.error("--rounds, --steps and --loop-steps must be >= 1, --warmup >= 0")
    if not 1 <= args.loop_samples <= BATCH:
        parser.error(f"--loop-samples must lie in [1, {BATCH}]")
    for option in ("embedding_dim", "num_embeddings", "condition_dim"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    return args


def workload_for(name: str, args: argparse.Namespace) -> Workload:
    """The named workload with the command line's size overrides."""
    overrides = {k: getattr(args, k) for k in ("embedding_dim", "num_embeddings", "condition_dim")}
    return dataclasses.replace(WORKLOADS[name], **{k: v for k, v in overrides.items() if v is not None})


def main(argv=None) -> int:
    """Run every workload, print the report, optionally write JSON; exit 0 (timing is informational)."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.rss_worker:
        name, impl, steps = args.rss_worker
        print(json.dumps(rss_worker(workload_for(name, args), impl, int(steps))))
        return 0
    print(f"torch {torch.__version__}, {platform.machine()}, threads={torch.get_num_threads()}, batch {BATCH}, Adam; "
          f"peak step mem: peak live torch tensor bytes during one step (torch.profiler)")  # fmt: skip
    results = []
    for name in args.workload:
        workload = workload_for(name, args)
        result = benchmark_workload(workload, args.rounds, args.steps, args.loop_steps, args.warmup,
                                    args.loop_samples, args.clock)  # fmt: skip
        if args.rss:
            result["rss_delta_bytes"] = measure_rss(workload)
        print(report(result), flush=True)
        results.append(result)
    if args.json:
        meta = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
                "batch": BATCH, "machine": platform.machine()}  # fmt: skip
        write_json(args.json, meta, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
