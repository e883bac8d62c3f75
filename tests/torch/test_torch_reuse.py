"""Eval-mode reuse of generated weights, and the direct parameter-slot swap.

The reference for every reused call is a fresh generation: the same hypernetwork's output
with autograd on (which never reuses), computed by hand as ``model`` run with the weights
``generator(embedding(arange(E)))`` cut by the layout.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hypernn import hypernetize


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return hypernetize(model, embedding_dim=3, num_embeddings=5, init="default")  # by_hand is hyper-nn's math


def by_hand(hnet, x):
    """The same math without hypernn: generate, cut, run F.linear twice."""
    flat = hnet.weight_generator(hnet.embedding_module.weight).reshape(-1)
    w0, b0, w1, b1 = torch.split(flat[: 4 * 8 + 8 + 8 * 3 + 3], [32, 8, 24, 3])
    h = torch.relu(x @ w0.view(8, 4).T + b0)
    return h @ w1.view(3, 8).T + b1


def counting(hnet):
    calls = []
    original = hnet.generate_params

    def generate_params(**kwargs):
        calls.append(1)
        return original(**kwargs)

    hnet.generate_params = generate_params
    return calls


def test_eval_without_autograd_generates_once_and_matches_the_math():
    hnet = make().eval()
    calls = counting(hnet)
    x = torch.randn(5, 4)
    with torch.no_grad():
        outs = [hnet(x) for _ in range(3)]
        expected = by_hand(hnet, x)
    assert len(calls) == 1
    for out in outs:
        assert_close(out, expected)


@pytest.mark.parametrize("mode", ["train", "grad"])
def test_training_or_autograd_generates_every_call(mode):
    hnet = make().train(mode == "train")
    calls = counting(hnet)
    x = torch.randn(2, 4)
    with torch.set_grad_enabled(mode == "grad"):
        hnet(x), hnet(x)
    assert len(calls) == 2


def test_no_stale_weights_after_an_optimizer_step():
    hnet = make()
    x = torch.randn(5, 4)
    optimizer = torch.optim.SGD(hnet.parameters(), lr=0.5)
    hnet.eval()
    with torch.no_grad():
        before = hnet(x)
    hnet.train()
    hnet(x).square().sum().backward()
    optimizer.step()
    hnet.eval()
    with torch.no_grad():
        after = hnet(x)
        assert_close(after, by_hand(hnet, x))
    assert (after - before).abs().max() > 1e-3


def test_no_stale_weights_after_load_state_dict_dtype_move_or_new_parameter():
    hnet, other = make().eval(), make()
    x = torch.randn(5, 4)
    with torch.no_grad():
        hnet(x)
        hnet.load_state_dict(other.state_dict())
        assert_close(hnet(x), by_hand(other, x))
        hnet.double()
        out = hnet(x.double())
        assert out.dtype == torch.float64
        assert_close(out, by_hand(hnet, x.double()))
        hnet.weight_generator.bias = nn.Parameter(torch.zeros_like(hnet.weight_generator.bias))
        assert_close(hnet(x.double()), by_hand(hnet, x.double()))


def test_data_edits_need_clear_generated_cache():
    hnet = make().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        stale = hnet(x)
        hnet.weight_generator.weight.data.mul_(2)  # bypasses the version counter
        assert_close(hnet(x), stale)  # documented: reuse cannot see `.data` edits
        hnet.clear_generated_cache()
        assert_close(hnet(x), by_hand(hnet, x))


def test_reuse_can_be_switched_off_and_has_aux_returns_the_reused_vector():
    hnet = make().eval()
    calls = counting(hnet)
    x = torch.randn(2, 4)
    with torch.no_grad():
        out, flat, aux = hnet(x, has_aux=True)
        _, flat_again, _ = hnet(x, has_aux=True)
        assert flat_again is flat and set(aux) == {"embedding"}
        assert len(calls) == 1
        hnet.reuse_generated_weights = False
        hnet(x), hnet(x)
    assert len(calls) == 3


def test_inference_mode_then_no_grad_both_match():
    hnet = make().eval()
    x = torch.randn(5, 4)
    with torch.inference_mode():
        first = hnet(x)
    with torch.no_grad():
        assert_close(hnet(x), first)
        assert_close(hnet(x), by_hand(hnet, x))


def test_copies_and_pickles_do_not_share_the_cache():
    hnet = make().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        hnet(x)
        twin = copy.deepcopy(hnet)
        with torch.no_grad():
            twin.weight_generator.weight.mul_(3)
        assert_close(twin(x), by_hand(twin, x))
        assert_close(hnet(x), by_hand(hnet, x))
        restored = pickle.loads(pickle.dumps(hnet))
        assert_close(restored(x), by_hand(hnet, x))


def test_functional_call_over_the_hypernetwork_does_not_reuse():
    hnet = make().eval()
    x = torch.randn(5, 4)
    params = {name: p.detach() * 2 for name, p in hnet.named_parameters()}
    with torch.no_grad():
        hnet(x)
        out = torch.func.functional_call(hnet, params, (x,))
        twin = copy.deepcopy(hnet)
        twin.load_state_dict(params, strict=False)
        assert_close(out, by_hand(twin, x))


# ---------------------------------------------------------------- the parameter-slot swap


def test_slots_are_empty_after_a_call_and_after_a_failing_call():
    hnet = make()
    hnet(torch.randn(2, 4))
    assert hnet.target_network[0]._parameters["weight"] is None
    with pytest.raises(RuntimeError):
        hnet(torch.randn(2, 5))  # wrong width: fails inside the model
    assert all(hnet.target_network[i]._parameters[n] is None for i in (0, 2) for n in ("weight", "bias"))


def test_slot_swap_matches_functional_call_in_outputs_and_gradients():
    hnet = make()
    x = torch.randn(5, 4)
    flat, _ = hnet.generate_params()
    direct = hnet(x, generated_params=flat)
    reference = torch.func.functional_call(hnet.target_network, hnet.unflatten(flat), (x,), strict=False)
    assert_close(direct, reference)
    g_direct = torch.autograd.grad(direct.sum(), list(hnet.parameters()), retain_graph=True)
    g_reference = torch.autograd.grad(reference.sum(), list(hnet.parameters()))
    for a, b in zip(g_direct, g_reference):
        assert_close(a, b)


def test_reused_calls_also_reuse_the_cut_tensors():
    hnet = make().eval()
    cuts = []
    original = hnet.unflatten
    hnet.unflatten = lambda flat: cuts.append(1) or original(flat)
    x = torch.randn(5, 4)
    with torch.no_grad():
        outs = [hnet(x) for _ in range(3)]
    assert len(cuts) == 1
    assert_close(outs[-1], by_hand(hnet, x))


def test_reused_calls_empty_the_slots_even_when_the_model_fails_and_restore_low_rank_bases():
    hnet = make().eval()
    with torch.no_grad():
        hnet(torch.randn(2, 4))
        with pytest.raises(RuntimeError):
            hnet(torch.randn(2, 5))  # a reused call that fails inside the model
    assert all(hnet.target_network[i]._parameters[n] is None for i in (0, 2) for n in ("weight", "bias"))
    adapted = hypernetize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), embedding_dim=3,
                          num_embeddings=5, low_rank=2).eval()  # fmt: skip
    bases = [adapted.target_network[i]._parameters["weight"] for i in (0, 2)]
    x = torch.randn(5, 4)
    with torch.no_grad():
        outs = [adapted(x) for _ in range(3)]
    assert [adapted.target_network[i]._parameters["weight"] for i in (0, 2)] == bases  # the frozen W0, back
    fresh = adapted(x)  # autograd on: generated again
    for out in outs:
        assert_close(out, fresh)


def test_no_stale_weights_after_a_generating_module_is_replaced_or_the_default_start_map_reloaded():
    hnet = make().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        hnet(x)
        hnet.weight_generator = nn.Linear(3, hnet.layout.chunk_dim)
        assert_close(hnet(x), by_hand(hnet, x))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    hyperfan = hypernetize(model, embedding_dim=3, num_embeddings=5).eval()  # the default init: with a start map
    source = hypernetize(model, embedding_dim=3, num_embeddings=5)
    with torch.no_grad():
        hyperfan(x)
        source.output_affine.scale.mul_(2)
        hyperfan.load_state_dict(source.state_dict())  # another start map and generator
        assert_close(hyperfan(x), source(x))  # (source in training mode: never reused)
