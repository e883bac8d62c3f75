"""Linen and NNX hypernetworks train on a mesh of 8 host CPU devices exactly as on one.

A child process (``mesh_worker.py train``, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs three jitted optax adam
steps of a hypernetized MLP 6-16-3 three ways: on one device; data-parallel on a
``("data",)`` mesh of 8 (batch sharded, parameters replicated); and on a
``("data", "model")`` 4x2 mesh with the generator's output layer sharded along its
chunks by :func:`hypernn.transform.jaxsharding.hypernetwork_partition_specs`. This
process keeps its own single device and compares the results.
"""

import numpy as np
import pytest

import mesh_worker

pytestmark = pytest.mark.distributed

BACKENDS = ("linen", "nnx")
LAYOUTS = ("data", "model")
#: sharded reductions sum in another order than one device: float32 rounding only
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return mesh_worker.launch("train", tmp_path_factory.mktemp("mesh"))


def by_prefix(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def test_child_sees_eight_devices_and_shards_the_batch(trained):
    _, facts = trained
    assert facts["num_devices"] == mesh_worker.NUM_DEVICES
    for backend in BACKENDS:
        assert facts[f"{backend}/single"]["batch_devices"] == 1
        for layout in LAYOUTS:
            assert facts[f"{backend}/{layout}"]["batch_devices"] == 8
            assert facts[f"{backend}/{layout}"]["batch_spec"] == "P('data',)"
        assert facts[f"{backend}/model"]["mesh"] == {"data": 4, "model": 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_parallel_keeps_every_parameter_replicated(trained, backend):
    params = trained[1][f"{backend}/data"]["params"]
    assert set(params) == {"embedding_module.embedding", "weight_generator.bias", "weight_generator.kernel"}
    for name, fact in params.items():
        assert (fact["spec"], fact["devices"], fact["shard_shape"]) == ("P()", 8, fact["shape"]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_axis_splits_the_generator_output_layer_and_its_adam_moments(trained, backend):
    facts = trained[1][f"{backend}/model"]
    expected = {
        "embedding_module.embedding": ("P()", [11, 4]),
        "weight_generator.bias": ("P('model',)", [8]),
        "weight_generator.kernel": ("P(None, 'model')", [4, 8]),
    }
    assert {name: (f["spec"], f["shard_shape"]) for name, f in facts["params"].items()} == expected
    for moment in ("mu", "nu"):
        moments = {name: (f["spec"], f["shard_shape"]) for name, f in facts["opt"].items() if f".{moment}." in name}
        assert moments == {f"0.{moment}.{name}": value for name, value in expected.items()}
    assert facts["opt"]["0.count"]["spec"] == "P()"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_mesh_training_equals_single_device_training(trained, backend, layout):
    arrays, _ = trained
    np.testing.assert_allclose(arrays[f"{backend}/{layout}/loss"], arrays[f"{backend}/single/loss"], **TOL)
    single = by_prefix(arrays, f"{backend}/single/")
    mesh = by_prefix(arrays, f"{backend}/{layout}/")
    assert set(mesh) == set(single)
    for name, value in single.items():
        np.testing.assert_allclose(mesh[name], value, **TOL, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_steps_changed_the_parameters(trained, backend):
    arrays, _ = trained
    initial = by_prefix(arrays, f"{backend}/initial/")
    single = by_prefix(arrays, f"{backend}/single/")
    assert initial and set(initial) <= set(single)
    for name, value in initial.items():
        # adam moves every entry by about the learning rate per step
        assert np.abs(single[name] - value).max() > mesh_worker.LEARNING_RATE, name
