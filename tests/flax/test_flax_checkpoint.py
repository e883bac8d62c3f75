"""Checkpoints of flax hypernetworks: flax.serialization and orbax round trips (linen with
batch_stats, NNX state), restores onto another mesh (in an 8-device child process), and
:func:`hypernn.transform.jaxcheckpoint.restore_variables` refusing a checkpoint of another
selection with the mismatching names listed and nothing changed."""

import copy

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx, serialization

import mesh_worker
from hypernn import hypernetize
from hypernn.errors import CheckpointMismatchError, OptionTypeError
from hypernn.transform.jaxcheckpoint import restore_variables
from hypernn.transform.jaxutil import dotted
from hypernn.transform.nnx.introspect import GeneratedSlot

X = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)


def leaves(tree):
    return {dotted(p).removesuffix(".value"): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b):
    a, b = leaves(a), leaves(b)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------- linen


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
        return nn.Dense(3)(nn.relu(x))


def linen_hnet(**options):
    # `example_inputs` plans at hypernetize time (see the report on the linen plan cache)
    return hypernetize(Net(), embedding_dim=4, num_embeddings=5, example_inputs=(X,), init_kwargs={"train": False}, **options)


def trained_linen(hnet, steps=3):
    """A few adam steps in train mode, so params and batch_stats leave their initial values."""
    variables = hnet.init(jax.random.key(0), X)
    params, stats, start = variables["params"], variables["batch_stats"], variables["hypernn"]
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(params):
            out, updates = hnet.apply({"params": params, "batch_stats": stats, "hypernn": start}, X, train=True,
                                      mutable=["batch_stats"])
            return (out**2).mean(), updates["batch_stats"]

        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    for _ in range(steps):
        params, stats, opt_state = step(params, stats, opt_state)
    return {"params": params, "batch_stats": stats, "hypernn": start}


@pytest.fixture(scope="module")
def linen_case():
    hnet = linen_hnet()
    variables = trained_linen(hnet)
    fresh = hnet.init(jax.random.key(1), X)
    expected = hnet.apply(variables, X)
    assert not np.allclose(hnet.apply(fresh, X), expected)  # a restore is visible in the output
    assert not np.allclose(variables["batch_stats"]["BatchNorm_0"]["mean"], 0)
    return hnet, variables, fresh, expected


def test_linen_to_bytes_from_bytes_round_trip_is_exact(linen_case):
    hnet, variables, fresh, expected = linen_case
    restored = serialization.from_bytes(fresh, serialization.to_bytes(variables))
    assert_trees_equal(restored, variables)
    np.testing.assert_array_equal(hnet.apply(restored, X), expected)


def test_linen_msgpack_restore_through_restore_variables(linen_case):
    hnet, variables, fresh, expected = linen_case
    checkpoint = serialization.msgpack_restore(serialization.to_bytes(variables))
    restored = restore_variables(fresh, checkpoint)
    assert_trees_equal(restored, variables)
    np.testing.assert_array_equal(hnet.apply(restored, X), expected)


def test_linen_orbax_round_trip(linen_case, tmp_path):
    hnet, variables, fresh, expected = linen_case
    abstract = jax.eval_shape(lambda: hnet.init(jax.random.key(1), X))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "linen", variables)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "linen", abstract)
        untargeted = checkpointer.restore(tmp_path / "linen")
    assert_trees_equal(restored, variables)
    np.testing.assert_array_equal(hnet.apply(restored, X), expected)
    np.testing.assert_array_equal(hnet.apply(restore_variables(abstract, untargeted), X), expected)


@pytest.mark.parametrize(
    "saved_targets, loaded_targets, listed",
    [
        (None, ["Dense_0"], [r"missing from the checkpoint: 'params.target_network.BatchNorm_0.bias'.*'params.target_network.Dense_1.kernel'",
                             r"shape mismatch: 'hypernn.start.scale' is \(6,\) in the checkpoint, \(2,\) here.*'params.weight_generator.bias' is \(\d+,\) in the checkpoint"]),
        (["Dense_0"], None, [r"not in this hypernetwork: 'params.target_network.BatchNorm_0.bias'.*'params.target_network.Dense_1.kernel'",
                             r"'params.weight_generator.kernel' is \(4, \d+\) in the checkpoint, \(4, \d+\) here"]),
    ],
    ids=["all-into-Dense_0", "Dense_0-into-all"],
)  # fmt: skip
def test_linen_checkpoint_of_another_selection_is_refused_and_template_unchanged(saved_targets, loaded_targets, listed):
    saved = linen_hnet(targets=saved_targets).init(jax.random.key(0), X)
    checkpoint = serialization.msgpack_restore(serialization.to_bytes(saved))
    template = linen_hnet(targets=loaded_targets).init(jax.random.key(1), X)
    before = copy.deepcopy(leaves(template))
    for pattern in listed:
        with pytest.raises(CheckpointMismatchError, match=pattern):
            restore_variables(template, checkpoint)
    assert_trees_equal(template, before)


def test_restore_variables_refuses_what_is_no_template_or_checkpoint(linen_case):
    _, variables, _, _ = linen_case
    with pytest.raises(OptionTypeError, match=r"`template` must be a linen hypernetwork's variable dict.*got list"):
        restore_variables([variables], variables)
    with pytest.raises(OptionTypeError, match=r"`checkpoint` must be a nested dict of arrays.*got bytes"):
        restore_variables(variables, serialization.to_bytes(variables))
    with pytest.raises(OptionTypeError, match=r"`checkpoint` must be a nested dict of arrays.*got tuple"):
        restore_variables(nnx.state(nnx_hnet()), (1, 2))


# ---------------------------------------------------------------- NNX


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.bn(self.fc1(x))))


def nnx_hnet(seed=0, **options):
    return hypernetize(NNXNet(nnx.Rngs(seed)), embedding_dim=4, num_embeddings=5, rngs=nnx.Rngs(seed + 1), **options)


def trained_nnx(hnet, steps=3):
    """Train mode (BatchStat updated), then eval mode for the outputs compared."""
    optimizer = nnx.Optimizer(hnet, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(hnet, optimizer):
        grads = nnx.grad(lambda m: (m(X) ** 2).mean())(hnet)
        optimizer.update(hnet, grads)

    for _ in range(steps):
        step(hnet, optimizer)
    hnet.eval()
    return hnet


@pytest.fixture(scope="module")
def nnx_case():
    hnet = trained_nnx(nnx_hnet())
    expected = hnet(X)
    assert not np.allclose(hnet.target_network.bn.mean.get_value(), 0)
    return hnet, expected


def fresh_nnx():
    fresh = nnx_hnet(seed=7)
    fresh.eval()
    return fresh


def test_nnx_orbax_saves_the_whole_state(nnx_case, tmp_path):
    hnet, expected = nnx_case
    state = nnx.state(hnet)  # the generated slots hold scalar placeholders, which orbax saves
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "whole", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "whole", nnx.state(nnx.eval_shape(fresh_nnx)))
    fresh = fresh_nnx()
    nnx.update(fresh, restored)
    np.testing.assert_array_equal(fresh(X), expected)


def test_nnx_orbax_round_trip_of_the_state(nnx_case, tmp_path):
    hnet, expected = nnx_case
    state = nnx.state(hnet, nnx.Not(GeneratedSlot))  # the placeholders can be left out too
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "nnx", state)
        checkpointer.wait_until_finished()
        abstract = nnx.state(nnx.eval_shape(fresh_nnx), nnx.Not(GeneratedSlot))
        restored = checkpointer.restore(tmp_path / "nnx", abstract)
        untargeted = checkpointer.restore(tmp_path / "nnx")  # leaves come back as {"value": array}
    assert_trees_equal(restored, state)
    fresh = fresh_nnx()
    assert not np.allclose(fresh(X), expected)
    nnx.update(fresh, restored)
    np.testing.assert_array_equal(fresh(X), expected)
    checked = restore_variables(fresh_nnx(), untargeted)
    np.testing.assert_array_equal(checked(X), expected)


def test_nnx_msgpack_of_the_pure_dict_through_restore_variables(nnx_case):
    hnet, expected = nnx_case
    checkpoint = serialization.msgpack_restore(serialization.to_bytes(nnx.to_pure_dict(nnx.state(hnet))))
    fresh = fresh_nnx()
    assert restore_variables(fresh, checkpoint) is fresh
    np.testing.assert_array_equal(fresh(X), expected)
    assert_trees_equal(nnx.state(fresh), nnx.state(hnet))


def test_nnx_state_template_gives_a_new_state_and_is_left_alone(nnx_case):
    hnet, expected = nnx_case
    template = nnx.state(fresh_nnx())
    before = copy.deepcopy(leaves(template))
    restored = restore_variables(template, nnx.state(hnet))
    assert isinstance(restored, nnx.State)
    assert_trees_equal(template, before)
    assert_trees_equal(restored, nnx.state(hnet))


@pytest.mark.parametrize(
    "saved_targets, loaded_targets, listed",
    [
        # the checkpoint holds empty slots where this module has parameters: listed as missing
        (None, ["fc1"], r"missing from the checkpoint: 'target_network.bn.bias', 'target_network.bn.scale', "
                        r"'target_network.fc2.bias', 'target_network.fc2.kernel'; shape mismatch: 'output_affine.scale' is "
                        r"\(6,\) in the checkpoint, \(2,\) here, 'output_affine.shift' .*'weight_generator.bias'"),
        (["fc1"], None, r"not in this hypernetwork: 'target_network.bn.bias', 'target_network.bn.scale', "
                        r"'target_network.fc2.bias', 'target_network.fc2.kernel'"),
    ],
    ids=["all-into-fc1", "fc1-into-all"],
)  # fmt: skip
def test_nnx_checkpoint_of_another_selection_is_refused_and_module_unchanged(saved_targets, loaded_targets, listed):
    checkpoint = nnx.to_pure_dict(nnx.state(nnx_hnet(targets=saved_targets)))
    module = nnx_hnet(seed=3, targets=loaded_targets)
    module.eval()  # a call in train mode would update the BatchNorm statistics itself
    before, output = copy.deepcopy(leaves(nnx.state(module))), module(X)
    with pytest.raises(CheckpointMismatchError, match=listed) as raised:
        restore_variables(module, checkpoint)
    assert "NNXNet hypernetwork" in str(raised.value)
    assert "'weight_generator.kernel' is (4, " in str(raised.value)
    assert_trees_equal(nnx.state(module), before)
    np.testing.assert_array_equal(module(X), output)


# ---------------------------------------------------------------- another mesh


@pytest.mark.distributed
def test_orbax_restores_a_4x2_sharded_checkpoint_onto_other_meshes(tmp_path):
    arrays, facts = mesh_worker.launch("checkpoint", tmp_path)
    assert facts["num_devices"] == 8
    for backend in ("linen", "nnx"):
        prefix = "params." if backend == "linen" else ""
        kernel = f"{prefix}weight_generator.kernel"
        saved = {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"{backend}/saved/")}
        assert facts[f"{backend}/saved"][kernel]["spec"] == "P(None, 'model')"
        assert facts[f"{backend}/saved"][kernel]["shard_shape"][-1] * 2 == facts[f"{backend}/saved"][kernel]["shape"][-1]
        assert facts[f"{backend}/2x4"][kernel]["spec"] == "P(None, 'model')"
        assert facts[f"{backend}/2x4"][kernel]["shard_shape"][-1] * 4 == facts[f"{backend}/2x4"][kernel]["shape"][-1]
        assert {f["spec"] for f in facts[f"{backend}/data8"].values()} == {"P()"}
        assert {f["devices"] for f in facts[f"{backend}/data8"].values()} == {8}
        for key in ("saved", "2x4", "data8", "untargeted"):
            for name, value in saved.items():
                if name != "output":
                    np.testing.assert_array_equal(arrays[f"{backend}/{key}/{name}"], value, err_msg=f"{backend} {key} {name}")
            # restore_variables took the restored (sharded) arrays: the saved network's output
            np.testing.assert_array_equal(arrays[f"{backend}/{key}/output"], arrays[f"{backend}/original/output"])
        assert not np.allclose(arrays[f"{backend}/fresh/output"], arrays[f"{backend}/original/output"])
