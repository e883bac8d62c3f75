"""Time and size one jitted training step of a dynamic low-rank JAX hypernetwork: factored vs merged.

``hypernetize(model, low_rank=4, condition_dim=C)`` gives every sample ``i`` its own
adapter: each ``Dense``/``Linear`` kernel becomes ``W0 + s * (A_i @ B_i).T``. Two ways to
run that step (batch 256, MLP ``Dense(256 -> 256), relu, Dense(256 -> 256)``, MSE loss
against a random target, ``optax.adam``; condition width 16, FiLM conditioning given small
random values so that samples differ):

* ``factored`` (what hypernn runs for ``nn.Dense``/``nnx.Linear``): each layer runs its own
  call with ``W0`` plus ``s * (x_i @ B_i.T) @ A_i.T``, two thin matmuls per sample;
* ``merged`` (what hypernn ran before, and still runs for convolutions): the per-sample
  kernels ``W0 + s * (A_i @ B_i).T`` are built, a ``(B, in, out)`` stack per layer, and the
  model runs on them under ``jax.vmap``. linen: the same hypernetwork's ``generate_params``
  and its merging ``target_tensors``, then ``jax.vmap(model.apply)``; NNX: a copy of the same
  hypernetwork with ``factored_kernels = ()``, i.e. hypernn's own merged path.

linen steps are one ``jax.jit`` over ``params``; NNX steps ``nnx.split`` once and one
``jax.jit`` over the ``nnx.Param`` State. Before timing, each pair is checked to give the
same loss and gradients on one batch. Timing interleaves the implementations round by
round (:func:`common.interleaved_times`, process CPU time, XLA on CPU pinned to one
thread); the time ratio is the median of per-round ratios factored/merged. Memory: XLA's
memory analysis of the compiled step (``temp``: the step's own buffers; ``total``: temp +
arguments + outputs); the ratio is factored/merged of temp.

Usage::

    python benchmarks/jax_low_rank_memory.py                    # linen and NNX, ~1 min CPU
    python benchmarks/jax_low_rank_memory.py --framework linen --rounds 11
    python benchmarks/jax_low_rank_memory.py --json /tmp/jax_low_rank.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import platform
import statistics
import sys
from typing import Any, Callable, Dict, List, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import add_round_args, check_round_args, interleaved_times, median_ratios, write_json
from hypernn import hypernetize

WIDTH, RANK, CONDITION_DIM = 256, 4, 16
OPTIONS = dict(embedding_dim=32, num_embeddings=16, low_rank=RANK, warm_start=False, condition_dim=CONDITION_DIM)
FILM_STD = 0.1

Batch = Tuple[jax.Array, jax.Array, jax.Array]  # (x, condition, target)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(WIDTH)(x)  # Dense_0
        return nn.Dense(WIDTH)(nn.relu(h))


class NNXMLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.fc2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def make_batch(batch: int, seed: int = 0) -> Batch:
    kx, kc, ky = jax.random.split(jax.random.key(seed), 3)
    shape = (batch, WIDTH)
    return jax.random.normal(kx, shape), jax.random.normal(kc, (batch, CONDITION_DIM)), jax.random.normal(ky, shape)


def randomized(tree: Any, seed: int) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([FILM_STD * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


# ---------------------------------------------------------------- forwards: (params, x, c) -> output


def linen_forwards(batch: Batch) -> Tuple[Dict[str, Callable], Any]:
    """``{"factored": forward, "merged": forward}`` of one linen hypernetwork, and its params."""
    x, c, _ = batch
    model = MLP()
    hnet = hypernetize(model, example_inputs=(x,), **OPTIONS)
    variables = hnet.init(jax.random.key(0), x, condition=c)
    frozen = {k: v for k, v in variables.items() if k != "params"}
    params = dict(variables["params"], condition_module=randomized(variables["params"]["condition_module"], 1))

    def factored(params, x, c):
        return hnet.apply({**frozen, "params": params}, x, condition=c)

    def merged(params, x, c):
        full = {**frozen, "params": params}
        flat, _ = hnet.apply(full, method="generate_params", condition=c)
        kernels = hnet.apply(full, flat, method="target_tensors")  # (B, in, out) per layer
        kept = params["target_network"]

        def one(sample_kernels, xi):
            tree = {n: {"kernel": sample_kernels[f"{n}.kernel"], "bias": kept[n]["bias"]} for n in ("Dense_0", "Dense_1")}
            return model.apply({"params": tree}, xi[None])[0]

        return jax.vmap(one)(kernels, x)

    return {"factored": factored, "merged": merged}, params


def nnx_forwards(batch: Batch) -> Tuple[Dict[str, Callable], Any]:
    """``{"factored": forward, "merged": forward}`` of one NNX hypernetwork, and its params."""
    hnet = hypernetize(NNXMLP(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1), **OPTIONS)
    nnx.update(hnet.condition_module, randomized(nnx.state(hnet.condition_module, nnx.Param), 1))
    merged_hnet = nnx.clone(hnet)
    merged_hnet.factored_kernels = ()  # hypernn's merged path, as for kernels it cannot factor
    forwards, params = {}, None
    for name, h in (("factored", hnet), ("merged", merged_hnet)):
        graphdef, params, rest = nnx.split(h, nnx.Param, ...)
        forwards[name] = (lambda g, r: lambda p, x, c: nnx.merge(g, p, r)(x, condition=c))(graphdef, rest)
    return forwards, params


# ---------------------------------------------------------------- steps


def make_step(forward: Callable, tx: optax.GradientTransformation) -> Tuple[Callable, Callable]:
    """The jitted ``step(params, opt_state, x, c, y)`` and its loss and gradients function."""

    def objective(params, x, c, y):
        return jnp.mean((forward(params, x, c) - y) ** 2)

    @jax.jit
    def step(params, opt_state, x, c, y):
        value, grads = jax.value_and_grad(objective)(params, x, c, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, jax.jit(jax.value_and_grad(objective))


class Runner:
    """One implementation's step with its own params and Adam state (``run() -> loss``)."""

    def __init__(self, forward: Callable, params: Any, batch: Batch):
        tx = optax.adam(1e-3)
        self.step, self.loss_and_grads = make_step(forward, tx)
        self.state, self.batch = (jax.tree.map(jnp.array, params), tx.init(params)), batch

    def __call__(self) -> jax.Array:
        params, opt_state, value = self.step(*self.state, *self.batch)
        self.state = (params, opt_state)
        return value

    def memory(self) -> Dict[str, int]:
        analysis = self.step.lower(*self.state, *self.batch).compile().memory_analysis()
        temp = analysis.temp_size_in_bytes
        return {"temp": temp, "total": temp + analysis.argument_size_in_bytes + analysis.output_size_in_bytes}


def check_equal(runners: Dict[str, Runner]) -> float:
    """Largest difference of loss and of each gradient, factored vs merged (fresh params),
    relative to that array's largest magnitude (float32 sums in another order differ)."""
    (loss_f, grads_f), (loss_m, grads_m) = (r.loss_and_grads(r.state[0], *r.batch) for r in runners.values())
    worst = 0.0
    for a, b in zip([loss_f, *jax.tree_util.tree_leaves(grads_f)], [loss_m, *jax.tree_util.tree_leaves(grads_m)]):
        a, b = np.asarray(a), np.asarray(b)
        worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)))
    if worst > 1e-4:
        raise AssertionError(f"factored and merged steps differ: max relative difference {worst:.1e}")
    return worst


def benchmark(framework: str, args: argparse.Namespace) -> Dict[str, Any]:
    batch = make_batch(args.batch)
    forwards, params = (linen_forwards if framework == "linen" else nnx_forwards)(batch)
    runners = {name: Runner(forward, params, batch) for name, forward in forwards.items()}
    difference = check_equal(runners)
    memory = {name: runner.memory() for name, runner in runners.items()}
    times = interleaved_times(runners, args.rounds, args.steps, args.warmup, args.clock, finish=jax.block_until_ready)
    time_ratio, per_round = median_ratios(times, "factored", "merged")
    return {
        "framework": framework, "batch": args.batch, "width": WIDTH, "rank": RANK, "clock": args.clock,
        "rounds": args.rounds, "steps": args.steps, "max_relative_difference": difference, "ms_per_step": times,
        "median_ms_per_step": {name: statistics.median(values) for name, values in times.items()},
        "xla_memory_bytes": memory, "time_ratio": time_ratio, "per_round_time_ratio": per_round,
        "temp_memory_ratio": memory["factored"]["temp"] / memory["merged"]["temp"],
    }  # fmt: skip


def report(result: Dict[str, Any]) -> str:
    mib = lambda n: f"{n / 2**20:8.2f} MiB"  # noqa: E731
    med, mem = result["median_ms_per_step"], result["xla_memory_bytes"]
    lines = [f"{result['framework']}: dynamic MLP {WIDTH}-{WIDTH}-{WIDTH}, low_rank={RANK}, batch {result['batch']} "
             f"(loss and gradients equal, max rel. diff {result['max_relative_difference']:.1e})",
             f"  {'implementation':<10} {'ms/step':>9} {'XLA temp':>12} {'XLA total':>12}"]  # fmt: skip
    for name in ("factored", "merged"):
        lines.append(f"  {name:<10} {med[name]:9.3f} {mib(mem[name]['temp']):>12} {mib(mem[name]['total']):>12}")
    ratios = sorted(result["per_round_time_ratio"])
    lines.append(f"  factored/merged: time {result['time_ratio']:.3f}x (median of {result['rounds']} per-round ratios, "
                 f"range {ratios[0]:.3f}-{ratios[-1]:.3f}; {result['clock']} time), XLA temp memory "
                 f"{result['temp_memory_ratio']:.3f}x")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: List[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A dynamic low-rank JAX hypernetwork's jitted training step, "
                                                 "factored Dense/Linear kernels vs merged ones: time and XLA memory.")
    add_round_args(parser, rounds=7, steps=10, warmup=3)
    parser.add_argument("--framework", choices=("linen", "nnx", "both"), default="both")
    parser.add_argument("--batch", type=int, default=256, help="samples (one adapter each) per step (default: 256)")
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    return args


def main(argv: List[str] = None) -> int:
    args = parse_args(argv)
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, flax {flax.__version__}, {device.platform} ({device.device_kind}), "
          f"{platform.machine()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)  # fmt: skip
    results = []
    for framework in (("linen", "nnx") if args.framework == "both" else (args.framework,)):
        result = benchmark(framework, args)
        print(report(result), flush=True)
        results.append(result)
    if args.json:
        meta = {"jax": jax.__version__, "flax": flax.__version__, "device": f"{device.platform} ({device.device_kind})",
                "xla_flags": os.environ.get("XLA_FLAGS", ""), "machine": platform.machine()}  # fmt: skip
        write_json(args.json, meta, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
