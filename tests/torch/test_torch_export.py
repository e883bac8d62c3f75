"""``hypernn.materialize`` (the inverse, as a function) and ``hnet.summary()`` on torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import hypernn
from hypernn import hypernetize
from hypernn.errors import ConditionError, OptionTypeError, UnsupportedModelError

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).to(DTYPE)


def lstm_head():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    return Net().to(DTYPE)


@pytest.mark.parametrize("make, shape, options", [
    (cnn, (5, 1, 4, 4), {}),
    (cnn, (5, 1, 4, 4), {"layout": "per_tensor", "warm_start": True}),
    (cnn, (5, 1, 4, 4), {"targets": nn.Linear, "init": "default"}),
    (lstm_head, (5, 7, 3), {}),
])  # fmt: skip
def test_round_trip_equals_the_hypernetwork_and_the_method(make, shape, options):
    hnet = hypernetize(make(), embedding_dim=4, num_embeddings=6, **options).eval()
    plain = hypernn.materialize(hnet)
    x = torch.randn(*shape, dtype=DTYPE)
    assert type(plain) is type(hnet.target_network)
    assert_close(plain.eval()(x), hnet(x))
    assert_close(plain(x), hnet.materialize().eval()(x))
    assert not any(p is q for p in plain.parameters() for q in hnet.parameters()), "independent of hnet"


def test_materialized_model_does_not_follow_later_training():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=6).eval()
    plain = hypernn.materialize(hnet).eval()
    x = torch.randn(2, 1, 4, 4, dtype=DTYPE)
    before = plain(x).detach().clone()
    with torch.no_grad():
        hnet.weight_generator.weight.add_(1.0)
    assert_close(plain(x), before, rtol=0, atol=0)
    assert not torch.allclose(hnet(x), before)


def test_wrapped_hypernetworks_are_unwrapped():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=6).eval()
    compiled = torch.compile(hnet)  # not run: only the wrapper is built
    x = torch.randn(2, 1, 4, 4, dtype=DTYPE)
    assert_close(hypernn.materialize(compiled).eval()(x), hnet(x))


def test_dynamic_needs_one_condition():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DTYPE)
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, condition_dim=2)
    with torch.no_grad():
        for p in hnet.condition_module.parameters():
            p.normal_(0, 0.5)
    c, x = torch.randn(3, 2, dtype=DTYPE), torch.randn(3, 4, dtype=DTYPE)
    for i in range(3):
        assert_close(hypernn.materialize(hnet, condition=c[i])(x[i : i + 1]), hnet(x, condition=c)[i : i + 1])
    with pytest.raises(ConditionError, match=r"materializing a dynamic hypernetwork needs the condition .*`hypernn\.materialize\(hnet, condition=c\)`"):
        hypernn.materialize(hnet)
    with pytest.raises(ConditionError, match=r"materialize needs one condition \(shape \(2,\) or one id\), not a batch: got "
                                             r"weights of shape \(3, 44\); materialize each"):
        hypernn.materialize(hnet, condition=c)
    tasks = hypernetize(model, embedding_dim=3, num_embeddings=4, num_conditions=3)
    assert_close(hypernn.materialize(tasks, condition=2)(x), tasks(x, condition=torch.tensor(2)))


def test_bad_calls_are_refused():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=6)
    with pytest.raises(ConditionError, match=r"`condition` is only for dynamic hypernetworks .* this HypernetizedModule is static"):
        hypernn.materialize(hnet, condition=torch.zeros(2))
    with pytest.raises(OptionTypeError, match=r"`variables` is only for flax linen hypernetworks; a torch hypernetwork"):
        hypernn.materialize(hnet, {"params": {}})
    with pytest.raises(UnsupportedModelError, match=r"`hnet` must be a hypernetwork made by hypernn\.hypernetize; got Sequential"):
        hypernn.materialize(cnn())
    with pytest.raises(UnsupportedModelError, match=r"`hnet` must be a torch\.nn\.Module, flax\.linen\.Module or flax\.nnx\.Module"):
        hypernn.materialize("not a model")


# ---------------------------------------------------------------- summary


def test_summary_rows_and_totals_are_data_and_print():
    model = cnn()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=6)
    summary = hnet.summary()
    names = [row.name for row in summary.tensors]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    rows = {row.name: row for row in summary.tensors}
    generated = hnet.generated_state_dict()
    for name, row in rows.items():
        assert row.shape == tuple(model.get_parameter(name).shape)
        assert row.generated_std == pytest.approx(generated[name].std(unbiased=False).item())
        assert row.generated_mean == pytest.approx(generated[name].mean().item(), abs=1e-12)
    assert rows["0.weight"].target_std == pytest.approx(1 / (3 * 9) ** 0.5)
    assert rows["4.bias"].target_std == pytest.approx(1 / (3 * 64) ** 0.5)
    assert (rows["1.weight"].target_mean, rows["1.weight"].target_std) == (1.0, 0.0)
    assert rows["0.weight"].std_ratio == pytest.approx(1.0)
    chunk = hnet.layout.chunk_dim
    assert rows["4.weight"].chunks == (hnet.layout.slots[4].offset // chunk, (hnet.layout.slots[4].offset + 191) // chunk)

    trainable = sum(p.numel() for p in hnet.parameters())
    assert summary.target_params == sum(p.numel() for p in model.parameters())
    assert summary.hypernetwork_params == trainable
    assert summary.compression_ratio == summary.target_params / trainable
    assert summary.totals()["compression_ratio"] == summary.compression_ratio
    assert summary.as_dicts()[0]["name"] == "0.weight" and summary.as_dicts()[0]["shape"] == (4, 1, 3, 3)
    text = str(summary)
    assert text.startswith("Sequential hypernetwork: global layout, 6 chunks x")
    assert "init='hyperfan', warm_start=False" in text
    assert "4.weight" in text and "kaiming_uniform(a=sqrt(5)), fan_in=64" in text and "= 1 (ones)" in text
    assert f"target params {summary.target_params:,}" in text and f"compression {summary.compression_ratio:.1f}x" in text


def test_the_summary_function_equals_the_method_and_checks_its_arguments():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=6)
    assert hypernn.summary(hnet).tensors == hnet.summary().tensors
    assert hypernn.summary(torch.compile(hnet)).totals() == hnet.summary().totals()
    with pytest.raises(OptionTypeError, match=r"`variables` is only for flax linen hypernetworks"):
        hypernn.summary(hnet, {"params": {}})
    with pytest.raises(ConditionError, match=r"`condition` is only for dynamic hypernetworks"):
        hypernn.summary(hnet, condition=torch.zeros(2))
    with pytest.raises(UnsupportedModelError, match=r"`hnet` must be a hypernetwork made by hypernn\.hypernetize; got Sequential"):
        hypernn.summary(cnn())


def test_summary_of_a_warm_start_compares_with_the_models_values():
    model = cnn()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=6, warm_start=True)
    for row in hnet.summary().tensors:
        values = model.get_parameter(row.name).detach()
        assert row.target_std == pytest.approx(values.std(unbiased=False).item())
        assert row.generated_std == pytest.approx(row.target_std, abs=1e-9)
        assert row.target_rule == "warm start: the model's values"


def test_summary_of_a_dynamic_hypernetwork_uses_a_given_or_zero_condition():
    model = nn.Sequential(nn.Linear(4, 6)).to(DTYPE)
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, condition_dim=2, condition_factory=hypernn.conditioning.concat())
    assert "at the zero condition" in str(hnet.summary())
    c = torch.tensor([3.0, -2.0], dtype=DTYPE)
    given = hnet.summary(condition=c)
    assert given.tensors[0].generated_std == pytest.approx(hnet.generated_state_dict(condition=c)["0.weight"].std(unbiased=False).item())
    with pytest.raises(ConditionError, match="summary takes one condition"):
        hnet.summary(condition=torch.zeros(2, 2, dtype=DTYPE))
