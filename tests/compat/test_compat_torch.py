"""The hyper-nn 0.2 torch API (``hypernn.torch``): hyper-nn's semantics checked against
hand-written math, and its known defects fixed."""

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypernn.errors import (
    CheckpointMismatchError,
    ConfigurationError,
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    UnsupportedModelError,
)
from hypernn.torch import TorchHyperNetwork, TorchLinearHyperNetwork
from hypernn.torch.hypernet import FunctionalTargetNetwork, create_functional_target_network
from hypernn.torch.utils import FunctionalParamVectorWrapper, count_params, get_weight_chunk_dims

SIZES = [(8, 4), (8,), (3, 8), (3,)]  # named_parameters of mlp(): 67 values


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def build(cls=TorchHyperNetwork, seed=1, **kwargs):
    target = mlp()
    torch.manual_seed(seed)
    kwargs.setdefault("embedding_dim", 5)
    kwargs.setdefault("num_embeddings", 4)
    return cls.from_target(target, **kwargs)


def hand_flat(hnet):
    """hyper-nn's generation written out: Linear(Embedding(arange(E))), flattened."""
    embedding = hnet.embedding_module.weight
    return (embedding @ hnet.weight_generator.weight.T + hnet.weight_generator.bias).reshape(-1)


def hand_mlp(flat, x):
    """The target run with consecutive slices of ``flat`` (hyper-nn's functional target)."""
    pieces, offset = [], 0
    for shape in SIZES:
        size = math.prod(shape)
        pieces.append(flat[offset : offset + size].reshape(shape))
        offset += size
    w1, b1, w2, b2 = pieces
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


# ------------------------------------------------------------------ hyper-nn's semantics


def test_forward_and_gradients_match_hand_written_math():
    hnet = build()
    x = torch.randn(6, 4)
    output = hnet(x)
    expected = hand_mlp(hand_flat(hnet), x)
    torch.testing.assert_close(output, expected)
    params = list(hnet.parameters())
    got = torch.autograd.grad(output.square().sum(), params)
    want = torch.autograd.grad(expected.square().sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("total, num_embeddings, chunk", [(10, 4, 3), (10, 3, 4), (7, 10, 1), (4192, 5, 839), (67, 4, 17)])
def test_weight_chunk_dim_is_the_ceiling_as_in_hyper_nns_code(total, num_embeddings, chunk):
    assert get_weight_chunk_dims(total, num_embeddings) == chunk  # hyper-nn's README says //, its code ceil


def test_sizes_generated_length_and_parameter_count():
    hnet = build()
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim, hnet.num_embeddings, hnet.embedding_dim) == (67, 17, 4, 5)
    flat, aux = hnet.generate_params()
    assert flat.shape == (68,)  # 4 * 17: one surplus value, unused
    torch.testing.assert_close(aux["embedding"], hnet.embedding_module.weight)
    assert hnet.target_weight_shapes == {"0.weight": torch.Size([8, 4]), "0.bias": torch.Size([8]),
                                         "2.weight": torch.Size([3, 8]), "2.bias": torch.Size([3])}  # fmt: skip
    assert sum(p.numel() for p in hnet.parameters()) == 4 * 5 + 5 * 17 + 17


def test_count_params_counts_every_parameter_once_as_an_int():
    shared = nn.Linear(4, 4)
    tied = nn.Sequential(shared, nn.ReLU(), shared)
    frozen = mlp().requires_grad_(False)
    assert count_params(tied) == 20 and type(count_params(tied)) is int
    assert TorchHyperNetwork.count_params(frozen) == 67
    assert TorchHyperNetwork.count_params(frozen, target_input_shape=[(1, 4)], inputs=[torch.ones(1, 4)]) == 67
    hnet = TorchHyperNetwork.from_target(tied, embedding_dim=2, num_embeddings=4)
    x = torch.randn(3, 4)
    weight, bias = hand_flat(hnet)[:16].reshape(4, 4), hand_flat(hnet)[16:20]
    torch.testing.assert_close(hnet(x), F.linear(F.relu(F.linear(x, weight, bias)), weight, bias))  # tied stays tied


def test_num_target_parameters_sizes_the_chunks():
    hnet = build(num_target_parameters=80)
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim) == (80, 20)
    x = torch.randn(2, 4)
    torch.testing.assert_close(hnet(x), hand_mlp(hand_flat(hnet), x))
    with pytest.raises(ConfigurationError, match=r"`num_target_parameters`=50 is less than the 67 parameter values"):
        build(num_target_parameters=50)


def test_weight_chunk_dim_can_be_given_and_must_hold_the_target():
    hnet = build(weight_chunk_dim=30)
    assert hnet.generate_params()[0].shape == (120,)
    x = torch.randn(2, 4)
    torch.testing.assert_close(hnet(x), hand_mlp(hand_flat(hnet), x))
    with pytest.raises(ConfigurationError, match=r"4 chunks of `weight_chunk_dim`=10 hold 40 values, fewer than the 67"):
        build(weight_chunk_dim=10)
    with pytest.raises(ConfigurationError, match=r"`num_embeddings` must be a positive int; got 0"):
        build(num_embeddings=0)


def test_constructor_defaults_are_hyper_nns():
    hnet = TorchHyperNetwork(mlp())
    assert (hnet.embedding_dim, hnet.num_embeddings, hnet.weight_chunk_dim) == (100, 3, 23)
    assert isinstance(hnet.embedding_module, nn.Embedding) and isinstance(hnet.weight_generator, nn.Linear)


def test_linear_hypernetwork_is_the_same_network_under_its_0_2_2_name():
    linear, base = build(TorchLinearHyperNetwork), build(TorchHyperNetwork)
    assert isinstance(linear, TorchHyperNetwork)
    x = torch.randn(3, 4)
    torch.testing.assert_close(linear(x), base(x))


def test_has_aux_and_given_params():
    hnet = build()
    x = torch.randn(3, 4)
    output, flat, aux = hnet(x, has_aux=True)
    torch.testing.assert_close(flat, hand_flat(hnet))
    assert set(aux) == {"embedding"}
    again, same, empty = hnet(x, generated_params=flat * 2, has_aux=True)
    assert empty == {} and same is not flat
    torch.testing.assert_close(again, hand_mlp(flat * 2, x))
    torch.testing.assert_close(hnet(x, generated_params=flat[:67]), output)  # exactly the target's values
    longer = torch.cat([flat, torch.randn(30)])
    torch.testing.assert_close(hnet(x, generated_params=longer), output)  # values past the target's are ignored


@pytest.mark.parametrize(
    "vector, error, message",
    [
        (torch.zeros(10), GeneratedParamsError, r"`generated_params` has 10 values; the target network needs at least 67"),
        (torch.zeros(2, 68), GeneratedParamsError, r"must be a vector; use torch.func.vmap .* got shape \(2, 68\)"),
        (torch.zeros(68, dtype=torch.long), GeneratedParamsTypeError, r"must be a floating-point tensor; got dtype torch.int64"),
        ([0.0] * 68, GeneratedParamsTypeError, r"must be a torch.Tensor; got list"),
    ],
)
def test_bad_generated_params_raise_clear_errors_not_bare_asserts(vector, error, message):
    hnet = build()
    with pytest.raises(error, match=message):
        hnet(torch.randn(2, 4), generated_params=vector)
    with pytest.raises(error, match=message):
        hnet.assert_parameter_shapes(vector)


def test_assert_parameter_shapes_false_skips_the_check_but_not_the_slicing():
    hnet = build()
    with pytest.raises(GeneratedParamsError, match=r"has 10 values; expected 68 .* or 67"):
        hnet(torch.randn(2, 4), generated_params=torch.zeros(10), assert_parameter_shapes=False)


# ------------------------------------------------------------------ customising


def test_custom_weight_generator_works():
    torch.manual_seed(3)
    generator = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 17))
    embedding = nn.Embedding(4, 5)
    hnet = TorchHyperNetwork.from_target(mlp(), embedding_dim=5, num_embeddings=4, custom_weight_generator=generator,
                                         custom_embedding_module=embedding)  # fmt: skip
    assert hnet.weight_generator is generator and hnet.embedding_module is embedding
    assert sorted(hnet.state_dict()) == ["embedding_module.weight", "weight_generator.0.bias", "weight_generator.0.weight",
                                         "weight_generator.2.bias", "weight_generator.2.weight"]  # fmt: skip
    x = torch.randn(3, 4)
    torch.testing.assert_close(hnet(x), hand_mlp(generator(embedding.weight).reshape(-1), x))


def test_custom_modules_are_checked_at_construction():
    with pytest.raises(GeneratorOutputError, match=r"shape \(num_embeddings, weight_chunk_dim\)=\(4, 17\); it gave \(4, 9\)"):
        build(custom_weight_generator=nn.Linear(5, 9))
    with pytest.raises(OptionTypeError, match=r"`custom_weight_generator` must be a torch.nn.Module or None; got function"):
        build(custom_weight_generator=lambda e: e)
    with pytest.raises(UnsupportedModelError, match=r"`target_network` must be a torch.nn.Module; got str"):
        TorchHyperNetwork("mlp")
    with pytest.raises(OptionTypeError, match=r"takes the constructor's arguments by keyword .* got 1 more positional"):
        TorchHyperNetwork.from_target(mlp(), None, None, None, 8)


class MLPGenerator(TorchHyperNetwork):
    """The MNIST/LunarLander notebooks' pattern: only make_weight_generator overridden."""

    def make_weight_generator(self):
        return nn.Sequential(nn.Linear(self.embedding_dim, 32), nn.ReLU(), nn.Linear(32, self.weight_chunk_dim))


def test_overriding_make_weight_generator():
    hnet = build(MLPGenerator)
    x = torch.randn(3, 4)
    flat = hnet.weight_generator(hnet.embedding_module.weight).reshape(-1)
    torch.testing.assert_close(hnet(x), hand_mlp(flat, x))


class Recorder(TorchHyperNetwork):
    """generate_params with its own arguments: what does forward pass it?"""

    def generate_params(self, x, shift=0.0):
        self.seen = (x, shift)
        flat, aux = super().generate_params()
        return flat + shift, aux


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, scale=1.0):
        return self.fc(x) * scale


def test_forward_passes_the_targets_inputs_to_generate_params_when_it_takes_them():
    torch.manual_seed(0)
    hnet = Recorder.from_target(Scaled(), embedding_dim=3, num_embeddings=2)
    x = torch.randn(3, 4)
    output = hnet(x, scale=2.0, generate_params_kwargs={"shift": 0.5})  # the target's `scale` is not generate_params'
    assert hnet.seen[0] is x and hnet.seen[1] == 0.5
    flat = hand_flat(hnet) + 0.5
    torch.testing.assert_close(output, F.linear(x, flat[:8].reshape(2, 4), flat[8:10]) * 2.0)
    hnet(x, generate_params_kwargs={"x": x * 0, "shift": 1.0})  # hyper-nn 0.2.2's call: everything by keyword
    assert torch.equal(hnet.seen[0], x * 0)
    with pytest.raises(OptionTypeError, match=r"generate_params\(x, shift=0.0\) accepts neither the target's inputs"):
        hnet(x, generate_params_kwargs={"offset": 1.0})


def test_generate_params_must_return_a_pair():
    class Bare(TorchHyperNetwork):
        def generate_params(self):
            return torch.zeros(68)

    hnet = build(Bare)
    with pytest.raises(GeneratorOutputError, match=r"must return a pair \(generated_params, aux_dict\); it returned Tensor"):
        hnet(torch.randn(2, 4))


# ------------------------------------------------------------------ fixed defects: buffers, DDP, state


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_batchnorm_buffers_are_registered_follow_eval_and_to():
    torch.manual_seed(0)
    target = BNNet()
    hnet = TorchHyperNetwork.from_target(target, embedding_dim=3, num_embeddings=4)
    assert {"target_network.bn.running_mean", "target_network.bn.running_var",
            "target_network.bn.num_batches_tracked"} <= set(hnet.state_dict())  # fmt: skip
    x = torch.randn(8, 4)
    hnet(x)  # train mode: running statistics move, in the hypernetwork's own copy
    bn = hnet.target_network.module.bn
    assert bn.num_batches_tracked.item() == 1 and target.bn.num_batches_tracked.item() == 0
    hnet.eval()
    assert not bn.training
    flat = hand_flat(hnet)
    weight, bias, gamma, beta = flat[:24].reshape(6, 4), flat[24:30], flat[30:36], flat[36:42]
    expected = F.batch_norm(F.linear(x, weight, bias), bn.running_mean, bn.running_var, gamma, beta, training=False)
    torch.testing.assert_close(hnet(x), expected)
    hnet.to(torch.float64)
    assert bn.running_mean.dtype == torch.float64 and hnet(x.double()).dtype == torch.float64


def test_no_device_dummy_every_parameter_gets_a_gradient():
    hnet = build()
    assert "__device_param_dummy__" not in dict(hnet.named_parameters())
    assert hnet.device == torch.device("cpu")
    hnet(torch.randn(2, 4)).sum().backward()
    assert all(p.grad is not None for p in hnet.parameters())  # what plain DDP requires


def test_the_given_model_is_never_modified():
    target = mlp()
    before = {name: p.detach().clone() for name, p in target.named_parameters()}
    hnet = TorchHyperNetwork.from_target(target, embedding_dim=3, num_embeddings=4)
    hnet(torch.randn(2, 4)).sum().backward()
    assert hnet.target_network.module is not target
    assert all(isinstance(p, nn.Parameter) and p.grad is None for p in target.parameters())
    for name, p in target.named_parameters():
        assert torch.equal(p, before[name])


def test_save_load_round_trip(tmp_path):
    hnet, other = build(seed=1), build(seed=2)
    x = torch.randn(3, 4)
    assert not torch.allclose(hnet(x), other(x))
    hnet.save(tmp_path / "hnet.pt")
    other.load(tmp_path / "hnet.pt")
    torch.testing.assert_close(other(x), hnet(x))


def test_hyper_nn_checkpoints_load_without_their_dummy_parameter():
    hnet, other = build(seed=1), build(seed=2)
    legacy = {"__device_param_dummy__": torch.empty(0), **hnet.state_dict()}  # what hyper-nn 0.2 saved
    other.load_state_dict(legacy)
    x = torch.randn(3, 4)
    torch.testing.assert_close(other(x), hnet(x))
    with pytest.raises(CheckpointMismatchError, match=r"'embedding_module.weight' is \(8, 5\) in the checkpoint, \(4, 5\) here"):
        other.load_state_dict(build(num_embeddings=8).state_dict())


def test_target_network_is_callable_with_a_vector_first():
    hnet = build()
    x = torch.randn(3, 4)
    flat = torch.randn(68)
    assert isinstance(hnet.target_network, FunctionalTargetNetwork)
    torch.testing.assert_close(hnet.target_network(flat, x), hand_mlp(flat, x))
    torch.testing.assert_close(hnet.functional_target_network(flat, x), hand_mlp(flat, x))
    assert isinstance(hnet.target_network.module, nn.Sequential) and hnet.target_network.training
    assert "FunctionalTargetNetwork(Sequential(" in repr(hnet.target_network)


def test_parameter_free_target():
    with pytest.warns(UserWarning, match="zero-element"):  # torch's: nn.Linear(3, 0), as in hyper-nn
        hnet = TorchHyperNetwork.from_target(nn.ReLU(), embedding_dim=3, num_embeddings=2)
    x = torch.randn(3, 4)
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim) == (0, 0)
    assert hnet.generate_params()[0].shape == (0,)
    torch.testing.assert_close(hnet(x), torch.relu(x))


def test_deepcopy_pickle_double_and_vmap():
    hnet = build()
    x = torch.randn(3, 4)
    expected = hnet(x)
    torch.testing.assert_close(copy.deepcopy(hnet)(x), expected)
    buffer = io.BytesIO()
    torch.save(hnet, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(hnet))(x), expected)
    torch.testing.assert_close(copy.deepcopy(hnet).double()(x.double()), expected.double())
    vectors = torch.randn(5, 68)
    batched = torch.func.vmap(lambda v: hnet(x, generated_params=v))(vectors)
    torch.testing.assert_close(batched, torch.stack([hand_mlp(v, x) for v in vectors]))


@pytest.mark.slow
def test_torch_compile_forward_and_backward():
    hnet = build()
    x = torch.randn(3, 4)
    compiled = torch.compile(hnet)
    output = compiled(x)
    torch.testing.assert_close(output, hand_mlp(hand_flat(hnet), x))
    output.sum().backward()
    assert all(p.grad is not None for p in hnet.parameters())


# ------------------------------------------------------------------ hyper-nn's utilities


def test_functional_param_vector_wrapper():
    torch.manual_seed(0)
    target = BNNet().eval()
    wrapper = create_functional_target_network(target)
    assert isinstance(wrapper, FunctionalParamVectorWrapper)
    assert list(wrapper.target_weight_shapes) == ["fc.weight", "fc.bias", "bn.weight", "bn.bias"]
    assert "module.bn.running_mean" in wrapper.state_dict()
    vector, x = torch.randn(42), torch.randn(5, 4)
    w, b, g, beta = vector[:24].reshape(6, 4), vector[24:30], vector[30:36], vector[36:42]
    expected = F.batch_norm(F.linear(x, w, b), target.bn.running_mean, target.bn.running_var, g, beta, training=False)
    torch.testing.assert_close(wrapper(vector, x), expected)
    torch.testing.assert_close(wrapper(torch.cat([vector, torch.ones(3)]), x), expected)
    with pytest.raises(GeneratedParamsError, match=r"has 41 values; the target network needs at least 42"):
        wrapper(vector[:41], x)
    with pytest.raises(GeneratedParamsTypeError, match=r"`param_vector` must be a torch.Tensor; got list"):
        wrapper([0.0], x)


def test_hypernn_extras_materialize_and_generated_state_dict():
    hnet = build()
    x = torch.randn(3, 4)
    plain = hnet.materialize()
    assert type(plain) is nn.Sequential and all(isinstance(p, nn.Parameter) for p in plain.parameters())
    torch.testing.assert_close(plain(x), hnet(x))
    weights = hnet.generated_state_dict()
    torch.testing.assert_close(weights["2.bias"], hand_flat(hnet)[64:67])
    assert "4 chunks x 17 = 68 generated values for 67 target values (1 unused)" in hnet.layout.describe()
