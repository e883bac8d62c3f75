"""``hypernetwork_partition_specs``: which arrays of a hypernetwork it shards, in this
process (one device; meshes are ``AbstractMesh``). Training on real meshes: test_jax_mesh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from hypernn import hypernetize, mlp_generator
from hypernn.errors import ConfigurationError
from hypernn.transform.jaxsharding import hypernetwork_partition_specs
from hypernn.transform.jaxutil import dotted

X = np.ones((2, 6), np.float32)
MESH_4X2 = AbstractMesh((4, 2), ("data", "model"))
KERNEL, BIAS, REPLICATED = P(None, "model"), P("model"), P()


def flat_specs(specs):
    leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    return {dotted(path).removesuffix(".value"): spec for path, spec in leaves}


class Net(nn.Module):
    """Dense, BatchNorm, and a layer the model itself names ``weight_generator``."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
        return nn.Dense(3, name="weight_generator")(nn.relu(x))


def linen_variables(**options):
    hnet = hypernetize(Net(), embedding_dim=4, example_inputs=(X,), **options)
    return hnet.init(jax.random.key(0), X)


def test_linen_output_layer_sharded_everything_else_replicated():
    specs = flat_specs(hypernetwork_partition_specs(linen_variables(chunk_dim=10, targets=["Dense_0"])))
    assert specs == {
        "batch_stats.BatchNorm_0.mean": REPLICATED,
        "batch_stats.BatchNorm_0.var": REPLICATED,
        # the start map's per-tensor constants
        "hypernn.start.scale": REPLICATED,
        "hypernn.start.shift": REPLICATED,
        "params.embedding_module.embedding": REPLICATED,
        "params.weight_generator.bias": BIAS,
        "params.weight_generator.kernel": KERNEL,
        "params.target_network.BatchNorm_0.bias": REPLICATED,
        "params.target_network.BatchNorm_0.scale": REPLICATED,
        # the model's own `weight_generator` layer is not the hypernetwork's
        "params.target_network.weight_generator.bias": REPLICATED,
        "params.target_network.weight_generator.kernel": REPLICATED,
    }


def test_params_alone_and_optimizer_state_get_the_same_specs():
    params = linen_variables(chunk_dim=10)["params"]
    specs = flat_specs(hypernetwork_partition_specs(params))
    assert specs == {"embedding_module.embedding": REPLICATED, "weight_generator.bias": BIAS, "weight_generator.kernel": KERNEL}
    opt_specs = flat_specs(hypernetwork_partition_specs(optax.adam(1e-3).init(params)))
    assert opt_specs == {"0.count": REPLICATED, **{f"0.{m}.{n}": s for m in ("mu", "nu") for n, s in specs.items()}}


def test_only_the_last_layer_of_an_mlp_generator_in_natural_order():
    # eleven Dense layers: Dense_10 is the output layer, though "Dense_9" sorts after it as text
    params = linen_variables(chunk_dim=10, generator_factory=mlp_generator((5,) * 10))["params"]
    specs = flat_specs(hypernetwork_partition_specs(params))
    sharded = {name: spec for name, spec in specs.items() if spec != REPLICATED}
    assert sharded == {"weight_generator.Dense_10.bias": BIAS, "weight_generator.Dense_10.kernel": KERNEL}
    assert params["weight_generator"]["Dense_10"]["kernel"].shape == (5, 10)


def test_mesh_given_shards_only_when_its_model_axis_divides_the_chunk():
    params = linen_variables(chunk_dim=10)["params"]
    on_4x2 = flat_specs(hypernetwork_partition_specs(params, mesh=MESH_4X2))
    assert on_4x2["weight_generator.kernel"] == KERNEL and on_4x2["weight_generator.bias"] == BIAS
    on_1x3 = flat_specs(hypernetwork_partition_specs(params, mesh=AbstractMesh((1, 3), ("data", "model"))))
    assert set(on_1x3.values()) == {REPLICATED}


def test_model_axis_name_is_used_and_checked_against_the_mesh():
    params = linen_variables(chunk_dim=10)["params"]
    mesh = AbstractMesh((4, 2), ("batch", "tensor"))
    specs = flat_specs(hypernetwork_partition_specs(params, mesh=mesh, model_axis="tensor"))
    assert specs["weight_generator.kernel"] == P(None, "tensor")
    with pytest.raises(ConfigurationError, match=r"`model_axis='model'` is not an axis of the given `mesh` \(axes \('batch', 'tensor'\)\)"):
        hypernetwork_partition_specs(params, mesh=mesh)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.bn(self.fc1(x))))


def test_nnx_state_gives_a_state_of_specs_usable_for_shardings():
    hnet = hypernetize(NNXNet(nnx.Rngs(0)), embedding_dim=4, chunk_dim=10, targets=["fc1"], rngs=nnx.Rngs(1),
                       generator_factory=mlp_generator((5,)))  # fmt: skip
    state = nnx.state(hnet)
    specs = hypernetwork_partition_specs(state)
    assert isinstance(specs, nnx.State)
    flat = flat_specs(specs)
    assert {n: s for n, s in flat.items() if s != REPLICATED} == {
        "weight_generator.layers.1.bias": BIAS,
        "weight_generator.layers.1.kernel": KERNEL,
    }
    assert set(flat) == {dotted(p) for p, _ in nnx.to_flat_state(state)}
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    placed = jax.device_put(state, shardings)
    kernel = placed["weight_generator"]["layers"][1]["kernel"]
    assert kernel.get_value().sharding.spec == KERNEL
    assert jnp.array_equal(kernel.get_value(), state["weight_generator"]["layers"][1]["kernel"].get_value())


def test_a_tree_without_a_generator_is_all_replicated():
    variables = Net().init(jax.random.key(0), X)
    assert set(flat_specs(hypernetwork_partition_specs(variables, mesh=MESH_4X2)).values()) == {REPLICATED}
