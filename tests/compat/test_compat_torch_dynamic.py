"""hyper-nn's dynamic torch hypernetwork (``hypernn.torch.dynamic_hypernet``): its RNN-gated
embeddings checked by hand, and batches (hyper-nn: one sample per call) equal to the loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypernn import DynamicHypernetizedModule
from hypernn.errors import ConditionError, ConditionTypeError, ConfigurationError, GeneratedParamsError, OptionTypeError
from hypernn.torch import TorchDynamicEmbeddingModule, TorchDynamicHyperNetwork, TorchHyperNetwork

IN, E, D = 6, 8, 3


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 16), nn.ReLU(), nn.Linear(16, 4))


def build(target=None, seed=1, **kwargs):
    target = target if target is not None else mlp()
    torch.manual_seed(seed)
    return TorchDynamicHyperNetwork.from_target(target, input_dim=IN, embedding_dim=D, num_embeddings=E, **kwargs)


def hand_params(hnet, x, hidden):
    """hyper-nn's dynamic generation for one sample ``x`` (1, IN): RNN cell, gate, linear."""
    cell = hnet.embedding_module.rnn_cell
    h = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + hidden @ cell.weight_hh.T + cell.bias_hh)
    embedding = hnet.embedding_module.embedding.weight * h.view(E, 1)
    generator = hnet.weight_generator
    return (embedding @ generator.weight.T + generator.bias).reshape(-1), h


def hand_mlp(flat, x):
    w1, b1 = flat[:96].reshape(16, IN), flat[96:112]
    w2, b2 = flat[112:176].reshape(4, 16), flat[176:180]
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


def test_one_sample_is_hyper_nns_computation():
    hnet = build()
    x = torch.randn(1, IN)
    output, flat, aux = hnet(x, has_aux=True)
    expected_flat, h = hand_params(hnet, x, torch.zeros(1, E))
    assert flat.shape == (E * hnet.weight_chunk_dim,) and aux["hidden_state"].shape == (1, E)  # one vector, as in hyper-nn
    torch.testing.assert_close(flat, expected_flat)
    torch.testing.assert_close(aux["hidden_state"], h)
    torch.testing.assert_close(output, hand_mlp(expected_flat, x))
    state = torch.randn(1, E)
    torch.testing.assert_close(hnet(x, generate_params_kwargs={"hidden_state": state}), hand_mlp(hand_params(hnet, x, state)[0], x))


def test_the_cell_step_equals_torchs_rnn_cell():
    module = TorchDynamicEmbeddingModule(input_dim=IN, embedding_dim=D, num_embeddings=E)
    x, state = torch.randn(5, IN), torch.randn(5, E)
    embedding, hidden = module(x, state)
    torch.testing.assert_close(hidden, module.rnn_cell(x, state))
    torch.testing.assert_close(embedding, module.embedding.weight * hidden[:, :, None])
    assert module.init_hidden().shape == (1, E) and module.device == torch.device("cpu")


def test_a_batch_generates_one_weight_set_per_sample_equal_to_the_loop():
    hnet = build().double()  # float64: batched and looped sums accumulate in different orders
    x = torch.randn(5, IN, dtype=torch.float64)
    output, flat, aux = hnet(x, has_aux=True)
    assert flat.shape == (5, E * hnet.weight_chunk_dim) and aux["hidden_state"].shape == (5, E)
    loop = torch.cat([hnet(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(output, loop)
    params = list(hnet.parameters())
    got = torch.autograd.grad(output.square().sum(), params)
    want = torch.autograd.grad(loop.square().sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_per_sample_convolution_equals_the_loop():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    torch.manual_seed(1)
    hnet = TorchDynamicHyperNetwork.from_target(target, input_dim=5, embedding_dim=3, num_embeddings=6)
    images, conditions = torch.randn(4, 2, 4, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    batched = hnet(images, generate_params_kwargs={"x": conditions})  # condition on something else than the input
    loop = torch.cat([hnet(images[i : i + 1], generate_params_kwargs={"x": conditions[i : i + 1]}) for i in range(4)])
    torch.testing.assert_close(batched, loop)


def test_hidden_state_threads_through_steps():
    hnet = build()
    x1, x2 = torch.randn(3, IN), torch.randn(3, IN)
    _, _, aux = hnet(x1, has_aux=True)
    step2 = hnet(x2, generate_params_kwargs={"hidden_state": aux["hidden_state"]})
    for i in range(3):
        flat1, h1 = hand_params(hnet, x1[i : i + 1], torch.zeros(1, E))
        flat2, _ = hand_params(hnet, x2[i : i + 1], h1)
        torch.testing.assert_close(step2[i : i + 1], hand_mlp(flat2, x2[i : i + 1]))
    shared = torch.randn(1, E)  # a (1, E) state is shared by every sample
    torch.testing.assert_close(hnet(x2, generate_params_kwargs={"hidden_state": shared})[1:2],
                               hnet(x2[1:2], generate_params_kwargs={"hidden_state": shared}))  # fmt: skip


def test_hyper_nn_0_2_2_calls_keep_working():
    hnet = build()
    x, state = torch.randn(1, IN), torch.randn(1, E)
    expected = hnet(x, generate_params_kwargs={"hidden_state": state})
    torch.testing.assert_close(hnet(x, generate_params_kwargs=dict(x=x, hidden_state=state)), expected)
    flat, aux = hnet.generate_params(x, hidden_state=state)
    torch.testing.assert_close(hnet(x, generated_params=flat), expected)
    torch.testing.assert_close(hnet.embedding_module.init_hidden(), torch.zeros(1, E))


def test_vmap_over_single_samples_equals_the_batch():
    hnet = build()
    x = torch.randn(7, 1, IN)
    flats, _ = torch.func.vmap(hnet.generate_params)(x)
    outputs = torch.func.vmap(lambda g, xi: hnet(xi, generated_params=g))(flats, x)
    torch.testing.assert_close(outputs[:, 0], hnet(x[:, 0]))
    torch.testing.assert_close(torch.func.vmap(hnet)(x), outputs)


def test_classes_positional_input_dim_and_materialize():
    target = mlp()
    hnet = TorchDynamicHyperNetwork(IN, target, None, D, E)
    assert isinstance(hnet, TorchHyperNetwork) and isinstance(hnet, DynamicHypernetizedModule)
    assert (hnet.input_dim, hnet.num_target_parameters, hnet.weight_chunk_dim) == (IN, 180, 23)
    assert set(hnet.state_dict()) == {"embedding_module.embedding.weight", "embedding_module.rnn_cell.weight_ih",
                                      "embedding_module.rnn_cell.weight_hh", "embedding_module.rnn_cell.bias_ih",
                                      "embedding_module.rnn_cell.bias_hh", "weight_generator.weight",
                                      "weight_generator.bias"}  # fmt: skip
    x = torch.randn(1, IN)
    plain = hnet.materialize(x=x)
    assert type(plain) is nn.Sequential
    torch.testing.assert_close(plain(x), hnet(x))
    legacy = {"__device_param_dummy__": torch.empty(0), "embedding_module.__device_param_dummy__": torch.empty(0),
              **build(seed=5).state_dict()}  # fmt: skip
    hnet.load_state_dict(legacy)
    torch.testing.assert_close(hnet(x), build(seed=5)(x))


def test_custom_modules():
    torch.manual_seed(2)
    generator = nn.Sequential(nn.Linear(D, 10), nn.Tanh(), nn.Linear(10, 23))
    hnet = build(custom_weight_generator=generator)
    assert hnet.weight_generator is generator
    x = torch.randn(1, IN)
    embedding, _ = hnet.embedding_module(x)
    torch.testing.assert_close(hnet(x), hand_mlp(generator(embedding).reshape(-1), x))


@pytest.mark.parametrize(
    "x, state, error, message",
    [
        (torch.randn(3, 5), None, ConditionError, r"`x` must have shape \(batch, input_dim=6\), one row per sample; got \(3, 5\)"),
        (torch.randn(6), None, ConditionError, r"`x` must have shape \(batch, input_dim=6\).* got \(6,\)"),
        (torch.ones(3, 6, dtype=torch.long), None, ConditionTypeError, r"`x` must be a floating-point tensor .* got torch.int64"),
        (torch.randn(3, 6), torch.zeros(2, 8), ConditionError, r"`hidden_state` must have shape \(1, 8\) or \(3, 8\) .* got \(2, 8\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, state, error, message):
    hnet = build()
    with pytest.raises(error, match=message):
        hnet(torch.randn(3, IN), generate_params_kwargs={"x": x, "hidden_state": state})


def test_bad_vectors_and_arguments():
    hnet = build()
    with pytest.raises(GeneratedParamsError, match=r"must be a vector or a \(batch, n\) batch of vectors; got shape \(2, 2, 184\)"):
        hnet(torch.randn(2, IN), generated_params=torch.zeros(2, 2, 184))
    with pytest.raises(GeneratedParamsError, match=r"has 100 values; the target network needs at least 180"):
        hnet(torch.randn(2, IN), generated_params=torch.zeros(2, 100))
    with pytest.raises(OptionTypeError, match=r"accepts neither the target's inputs"):
        hnet(torch.randn(2, IN), generate_params_kwargs={"h": None})
    with pytest.raises(ConfigurationError, match=r"`input_dim` must be a positive int; got 0"):
        TorchDynamicHyperNetwork(0, mlp())
