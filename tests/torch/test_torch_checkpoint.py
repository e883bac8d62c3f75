"""Checkpoints of torch hypernetworks: exact round trips, wrapper prefixes, clear mismatches."""

import io

import pytest
import torch
from torch import nn

from hypernn import hypernetize
from hypernn.errors import CheckpointMismatchError


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def trained(hnet, steps=3):
    optimizer = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        hnet(torch.randn(8, 1, 8, 8)).pow(2).mean().backward()
        optimizer.step()
    return hnet


def saved(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def test_round_trip_is_exact_buffers_included():
    transform = hypernetize(embedding_dim=4, num_embeddings=8, targets=nn.Conv2d)
    source = trained(transform(cnn()))
    fresh = transform(cnn())
    fresh.load_state_dict(saved(source.state_dict()))
    for (name, a), (_, b) in zip(source.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    source.eval(), fresh.eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["compile", "ddp", "ddp+compile"])
def test_state_dicts_of_wrapped_hypernetworks_load(wrap):
    transform = hypernetize(embedding_dim=4, num_embeddings=8)
    source = trained(transform(cnn()))
    state = source.state_dict()
    if "compile" in wrap:
        state = torch.compile(source).state_dict()  # keys gain "_orig_mod."; nothing is compiled yet
        assert next(iter(state)).startswith("_orig_mod.")
    if "ddp" in wrap:  # DistributedDataParallel prefixes "module."
        state = {f"module.{k}": v for k, v in state.items()}
    fresh = transform(cnn())
    fresh.load_state_dict(saved(state))
    x = torch.randn(2, 1, 8, 8)
    fresh.eval(), source.eval()
    torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)


def test_a_checkpoint_of_another_selection_lists_the_names_and_loads_nothing():
    conv_only = trained(hypernetize(cnn(), embedding_dim=4, num_embeddings=8, targets=nn.Conv2d))
    everything = hypernetize(cnn(), embedding_dim=4, num_embeddings=8)
    before = {k: v.clone() for k, v in everything.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"does not fit this Sequential hypernetwork \(nothing was loaded\): not in this hypernetwork: 'target_network\.1\.bias', 'target_network\.1\.weight', 'target_network\.4\.bias', 'target_network\.4\.weight'; shape mismatch: 'output_affine\.scale' is \(2,\) in the checkpoint, \(6,\) here, 'output_affine\.shift' is \(2,\) in the checkpoint, \(6,\) here, 'weight_generator\.bias' is \(5,\) in the checkpoint, \(61,\) here"):
        everything.load_state_dict(conv_only.state_dict())
    for key, value in everything.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_a_checkpoint_of_another_model_is_refused():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=8)
    other = hypernetize(nn.Sequential(nn.Linear(3, 3)), embedding_dim=4, num_embeddings=8)
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint: 'target_network\.1\.num_batches_tracked'"):
        hnet.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError):  # also a RuntimeError, like torch's own message
        hnet.load_state_dict(other.state_dict())


def test_non_strict_loading_still_checks_shapes():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=8)
    state = hnet.state_dict()
    partial = {"embedding_module.weight": torch.zeros(8, 4)}
    result = hnet.load_state_dict(partial, strict=False)
    assert "weight_generator.weight" in result.missing_keys
    assert hnet.embedding_module.weight.abs().sum() == 0
    with pytest.raises(CheckpointMismatchError, match=r"'embedding_module\.weight' is \(9, 4\) in the checkpoint, \(8, 4\) here"):
        hnet.load_state_dict({"embedding_module.weight": torch.zeros(9, 4)}, strict=False)
    assert set(state) == set(hnet.state_dict())
