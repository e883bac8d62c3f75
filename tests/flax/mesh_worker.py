"""Multi-device JAX work for the mesh and checkpoint tests, run in a child process.

``launch(task, out)`` starts ``python mesh_worker.py TASK OUT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in its environment, so jax in the
child sees 8 CPU devices while the pytest process keeps its single device. The child
writes ``OUT/TASK.npz`` (arrays) and ``OUT/TASK.json`` (shardings, device counts); the
tests compare those.

Tasks:
    train       linen and NNX hypernetworks of a small MLP, a jitted optax adam step run on
                one device, data-parallel on a ("data",) mesh of 8, and with the generator's
                output layer sharded on a ("data", "model") 4x2 mesh.
    checkpoint  orbax save of state sharded on the 4x2 mesh, restored onto a 2x4 mesh
                (model axis 4) and onto the 8-device data mesh (replicated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

NUM_DEVICES = 8
STEPS = 3
BATCH = 16
LEARNING_RATE = 1e-2


def launch(task: str, out: Path, timeout: float = 120) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Run ``task`` in a child with 8 host devices; its arrays and facts, or the test fails."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}", OMP_NUM_THREADS="1",
               JAX_PLATFORMS="cpu")  # fmt: skip
    done = subprocess.run([sys.executable, __file__, task, str(out)], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"mesh_worker {task} failed (exit {done.returncode}):\n{done.stderr[-6000:]}")
    with np.load(out / f"{task}.npz") as arrays:
        loaded = dict(arrays)
    return loaded, json.loads((out / f"{task}.json").read_text())


# ---------------------------------------------------------------- models and data (child only)


def batches():
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(BATCH, 6)).astype(np.float32), rng.normal(size=(BATCH, 3)).astype(np.float32))
            for _ in range(STEPS)]  # fmt: skip


def linen_hypernetwork():
    import flax.linen as nn

    from hypernn import hypernetize

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))

    # 163 parameters in chunks of 16: the generator's output kernel is (4, 16)
    return hypernetize(MLP(), embedding_dim=4, chunk_dim=16, example_inputs=(np.zeros((1, 6), np.float32),))


def nnx_hypernetwork(seed: int = 0):
    from flax import nnx

    from hypernn import hypernetize

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(6, 16, rngs=rngs)
            self.fc2 = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.fc1(x)))

    return hypernetize(MLP(nnx.Rngs(seed)), embedding_dim=4, chunk_dim=16, rngs=nnx.Rngs(seed + 1))


def flat(tree: Any) -> Dict[str, np.ndarray]:
    import jax

    from hypernn.transform.jaxutil import dotted

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {dotted(p).removesuffix(".value"): np.asarray(jax.device_get(leaf)) for p, leaf in leaves}


# ---------------------------------------------------------------- training


def train(loss_fn: Callable, params: Any, layout: str) -> Tuple[Any, list, Dict[str, Any]]:
    """``STEPS`` adam steps of ``loss_fn(params, x, y)`` on one device or on a mesh."""
    import jax
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from hypernn.transform.jaxsharding import hypernetwork_partition_specs

    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    facts: Dict[str, Any] = {}
    if layout == "single":
        jitted, put = jax.jit(step), jax.device_put
    else:
        devices = np.array(jax.devices())
        mesh = Mesh(devices, ("data",)) if layout == "data" else Mesh(devices.reshape(4, 2), ("data", "model"))
        shard = lambda tree: jax.tree.map(lambda s: NamedSharding(mesh, s), tree)  # noqa: E731
        if layout == "data":
            param_sh, opt_sh = shard(jax.tree.map(lambda _: P(), params)), shard(jax.tree.map(lambda _: P(), opt_state))
        else:
            param_sh = shard(hypernetwork_partition_specs(params, mesh=mesh))
            opt_sh = shard(hypernetwork_partition_specs(opt_state, mesh=mesh))
        data_sh, scalar_sh = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        params, opt_state = jax.device_put(params, param_sh), jax.device_put(opt_state, opt_sh)
        jitted = jax.jit(step, in_shardings=(param_sh, opt_sh, data_sh, data_sh), out_shardings=(param_sh, opt_sh, scalar_sh))
        put = lambda a: jax.device_put(a, data_sh)  # noqa: E731
        facts["mesh"] = dict(mesh.shape)
    losses = []
    for x, y in batches():
        xs, ys = put(x), put(y)
        params, opt_state, loss = jitted(params, opt_state, xs, ys)
        losses.append(float(loss))
    facts["batch_spec"] = str(getattr(xs.sharding, "spec", None))
    facts["batch_devices"] = len(xs.sharding.device_set)
    facts["params"] = {name: _sharding_facts(leaf) for name, leaf in _leaves(params).items()}
    facts["opt"] = {name: _sharding_facts(leaf) for name, leaf in _leaves(opt_state).items()}
    return params, losses, facts


def _leaves(tree: Any) -> Dict[str, Any]:
    import jax

    from hypernn.transform.jaxutil import dotted

    return {dotted(p).removesuffix(".value"): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _sharding_facts(leaf: Any) -> Dict[str, Any]:
    sharding = leaf.sharding
    return {
        "spec": str(getattr(sharding, "spec", None)),
        "devices": len(sharding.device_set),
        "shard_shape": list(leaf.addressable_shards[0].data.shape),
        "shape": list(leaf.shape),
    }


def linen_problem():
    hnet = linen_hypernetwork()
    variables = hnet.init(__import__("jax").random.key(0), batches()[0][0])
    params, constants = variables["params"], {c: v for c, v in variables.items() if c != "params"}

    def loss_fn(params, x, y):  # the start map's constants ride along, replicated
        return ((hnet.apply({**constants, "params": params}, x) - y) ** 2).mean()

    return loss_fn, params


def nnx_problem():
    from flax import nnx

    graphdef, params, rest = nnx.split(nnx_hypernetwork(), nnx.Param, ...)

    def loss_fn(params, x, y):
        return ((nnx.merge(graphdef, params, rest)(x) - y) ** 2).mean()

    return loss_fn, params


def task_train(out: Path) -> None:
    arrays: Dict[str, np.ndarray] = {}
    facts: Dict[str, Any] = {}
    for backend, problem in (("linen", linen_problem), ("nnx", nnx_problem)):
        for layout in ("single", "data", "model"):
            loss_fn, params = problem()
            if layout == "single":
                arrays.update({f"{backend}/initial/{k}": v for k, v in flat(params).items()})
            trained, losses, layout_facts = train(loss_fn, params, layout)
            arrays[f"{backend}/{layout}/loss"] = np.asarray(losses)
            arrays.update({f"{backend}/{layout}/{k}": v for k, v in flat(trained).items()})
            facts[f"{backend}/{layout}"] = layout_facts
    finish(out, "train", arrays, facts)


# ---------------------------------------------------------------- checkpoint resharding


def save_and_restore(out: Path, name: str, state: Any) -> Dict[str, Any]:
    """Save ``state`` sharded on the 4x2 mesh; restore it onto a 2x4 and an 8x1 mesh."""
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from hypernn.transform.jaxsharding import hypernetwork_partition_specs

    devices = np.array(jax.devices())
    meshes = {"4x2": Mesh(devices.reshape(4, 2), ("data", "model")), "2x4": Mesh(devices.reshape(2, 4), ("data", "model")),
              "data8": Mesh(devices, ("data",))}  # fmt: skip

    def target(mesh_name: str) -> Any:
        mesh = meshes[mesh_name]
        specs = hypernetwork_partition_specs(state, mesh=mesh) if "model" in mesh.axis_names else jax.tree.map(lambda _: P(), state)
        shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)

    saved = jax.device_put(state, jax.tree.map(lambda t: t.sharding, target("4x2")))
    path = (out / f"{name}_ckpt").absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, saved)
        checkpointer.wait_until_finished()
        restored = {mesh_name: checkpointer.restore(path, target(mesh_name)) for mesh_name in ("2x4", "data8")}
        untargeted = checkpointer.restore(path)
    return {"saved": saved, **restored, "untargeted": untargeted}


def task_checkpoint(out: Path) -> None:
    import jax
    from flax import nnx

    from hypernn.transform.jaxcheckpoint import restore_variables
    from hypernn.transform.nnx.introspect import GeneratedSlot

    x = batches()[0][0]
    arrays: Dict[str, np.ndarray] = {}
    facts: Dict[str, Any] = {}

    hnet = linen_hypernetwork()
    variables = hnet.init(jax.random.key(3), x)
    results = save_and_restore(out, "linen", variables)
    fresh = hnet.init(jax.random.key(4), x)
    for key, tree in results.items():
        arrays.update({f"linen/{key}/{k}": v for k, v in flat(tree).items()})
        facts[f"linen/{key}"] = {n: _sharding_facts(leaf) for n, leaf in _leaves(tree).items()}
        arrays[f"linen/{key}/output"] = np.asarray(hnet.apply(restore_variables(fresh, tree), x))
    arrays["linen/original/output"] = np.asarray(hnet.apply(variables, x))
    arrays["linen/fresh/output"] = np.asarray(hnet.apply(fresh, x))

    module = nnx_hypernetwork()
    state = nnx.state(module, nnx.Not(GeneratedSlot))  # orbax refuses the empty slots
    results = save_and_restore(out, "nnx", state)
    for key, tree in results.items():
        arrays.update({f"nnx/{key}/{k}": v for k, v in flat(tree).items()})
        facts[f"nnx/{key}"] = {n: _sharding_facts(leaf) for n, leaf in _leaves(tree).items()}
        arrays[f"nnx/{key}/output"] = np.asarray(restore_variables(nnx_hypernetwork(seed=5), tree)(x))
    arrays["nnx/original/output"] = np.asarray(module(x))
    arrays["nnx/fresh/output"] = np.asarray(nnx_hypernetwork(seed=5)(x))
    finish(out, "checkpoint", arrays, facts)


# ---------------------------------------------------------------- entry point


def finish(out: Path, task: str, arrays: Dict[str, np.ndarray], facts: Dict[str, Any]) -> None:
    import jax

    facts["num_devices"] = jax.device_count()
    np.savez(out / f"{task}.npz", **arrays)
    (out / f"{task}.json").write_text(json.dumps(facts, indent=1, sort_keys=True))


def main(task: str, out: str) -> None:
    import jax

    if jax.device_count() != NUM_DEVICES:
        raise SystemExit(f"expected {NUM_DEVICES} host devices, got {jax.devices()}: XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    {"train": task_train, "checkpoint": task_checkpoint}[task](Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
