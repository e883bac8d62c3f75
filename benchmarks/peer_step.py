"""Peers: hyper-nn 0.2.2 and hyperlight 0.0.5, each against a hand-written twin of its own math.

Runs inside a peer's own virtual environment (``.peers/<peer>/``, made by
``peer_setup.py``; hyper-nn's import name is also ``hypernn``), so it never imports this
repository's ``hypernn``. Each peer is timed against a hand-written twin of *its own* math
(same initial values; equal outputs, loss and gradients asserted first), so the ratios
compare overheads, not architectures:

* **hyper-nn** (``TorchLinearHyperNetwork``: ``nn.Embedding`` + ``nn.Linear`` generator,
  the global layout, cut by ``flat[a:b]`` slices, run through functorch's
  ``make_functional``): the same math as hypernn's default, ``D=32, E=64``, so its twin is
  hypernn's twin (``twins.HandWrittenHypernet``: one ``torch.split``, ``F.linear``).
  Per-sample: ``TorchDynamicHyperNetwork`` (an ``RNNCell`` from the condition gates the
  embeddings) under ``torch.func.vmap`` over samples; twin: the same cell, gating,
  generator and split, batched, ``torch.baddbmm``.
* **hyperlight** (``HyperNet``: an MLP from an input ``h`` (cos|sin encoded) to the flat
  weights, hidden ``[8]``; the model's parameters made external by
  ``hyperlight.hypernetize`` and set with ``using_externals``): twin: the same MLP
  written with ``F.linear``/``F.leaky_relu``, one ``torch.split``, ``F.linear``. Its
  output layer has ``8 x P`` weights, so Adam over them dominates its step (and dilutes
  its ratio): compare the overhead in ms too. Per-sample: the same under
  ``torch.func.vmap`` (input: the condition, in [0, 1]) with ``encoding=None``, as the
  default encoding's range check (``if tensor.any()``) cannot run under ``vmap``.

Workloads: ``static`` (784-256-256-10 MLP, batch 128, training step), ``deep_forward`` /
``deep_step`` (48 x (Linear(64, 64), ReLU), batch 32, training-mode forward / step; the
generated weights scaled to He size: the peers have no start map like hypernn's hyperfan,
and their default overflows over 48 layers), ``per_sample``
(MLP 32-64-32, batch 256, condition 16, one weight set per sample, MSE training step).
Steps use Adam (lr 1e-3). A workload a peer cannot run is reported n/a with the error.

Usage (inside a peer's environment; ``run_all.py`` does this)::

    .peers/hyper-nn/bin/python benchmarks/peer_step.py --peer hyper-nn --json /tmp/p.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import platform
import sys
import traceback
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from common import add_round_args, check_round_args, format_rows, interleaved_times, make_row, rss_growth
from common import rss_in_subprocesses, write_json
from twins import SIZES, HandWrittenHypernet, build_mlp, mlp_shapes, split_sizes

PEERS = ("hyper-nn", "hyperlight")
WORKLOADS = {
    "static": "static MLP step",
    "deep_forward": "48-layer MLP forward",
    "deep_step": "48-layer MLP step",
    "per_sample": "per-sample weights step, batch 256",
}
DEEP = (64,) * 49
PER_SAMPLE = (32, 64, 32)
EMBEDDING_DIM, NUM_EMBEDDINGS, CONDITION_DIM = 32, 64, 16
#: hyperlight's generator width: its output layer has HIDDEN x P weights (P: the model's
#: values), so its step is dominated by Adam over them, which dilutes its overhead ratio;
#: 8 keeps that moderate
HIDDEN = 8
BATCHES = {"static": 128, "deep_forward": 32, "deep_step": 32, "per_sample": 256}

Batch = Tuple[torch.Tensor, ...]  # (x, target) or (x, condition, target)


# ---------------------------------------------------------------- data and steps


def make_batches(workload: str, count: int, seed: int = 1) -> List[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batch, out = BATCHES[workload], []
    for _ in range(count):
        if workload == "static":
            out.append((torch.randn(batch, SIZES[0], generator=generator),
                        torch.randint(0, SIZES[-1], (batch,), generator=generator)))  # fmt: skip
        elif workload.startswith("deep"):
            out.append((torch.randn(batch, 64, generator=generator), torch.randn(batch, 64, generator=generator)))
        else:  # conditions in [0, 1]: hyperlight's inputs are hyperparameters in that range
            out.append((torch.randn(batch, 32, generator=generator), torch.rand(batch, CONDITION_DIM, generator=generator),
                        torch.randn(batch, 32, generator=generator)))  # fmt: skip
    return out


def loss_of(workload: str, model: nn.Module, batch: Batch) -> torch.Tensor:
    if workload == "static":
        return F.cross_entropy(model(batch[0]), batch[1])
    if workload == "per_sample":
        return F.mse_loss(model(batch[0], batch[1]), batch[2])
    return F.mse_loss(model(batch[0]), batch[1])


def runner(workload: str, model: nn.Module, batches: Sequence[Batch]) -> Callable[[], object]:
    """One training step (or, for ``deep_forward``, one training-mode forward) per call."""
    optimizer, state = torch.optim.Adam(model.parameters(), lr=1e-3), {"i": 0}

    def run() -> object:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        if workload == "deep_forward":
            return model(batch[0])
        loss = loss_of(workload, model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return run


# ---------------------------------------------------------------- hyper-nn


class HyperNNStatic(nn.Module):
    """hyper-nn's ``TorchLinearHyperNetwork`` over an MLP (``D=32, E=64``)."""

    def __init__(self, sizes: Sequence[int], final_relu: bool):
        super().__init__()
        from hypernn.torch import TorchLinearHyperNetwork

        self.hnet = TorchLinearHyperNetwork(build_mlp(sizes, final_relu), embedding_dim=EMBEDDING_DIM,
                                            num_embeddings=NUM_EMBEDDINGS)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hnet(x)

    def trained(self) -> Dict[str, torch.Tensor]:
        return {"embedding": self.hnet.embedding_module.weight, "generator.weight": self.hnet.weight_generator.weight,
                "generator.bias": self.hnet.weight_generator.bias}  # fmt: skip


class HandStatic(HandWrittenHypernet):
    def trained(self) -> Dict[str, torch.Tensor]:
        return {"embedding": self.embedding.weight, "generator.weight": self.generator.weight,
                "generator.bias": self.generator.bias}  # fmt: skip


class HyperNNPerSample(nn.Module):
    """hyper-nn's ``TorchDynamicHyperNetwork`` (condition -> ``RNNCell`` gating the
    embeddings) run per sample under ``torch.func.vmap``."""

    def __init__(self):
        super().__init__()
        from hypernn.torch import TorchDynamicHyperNetwork

        self.hnet = TorchDynamicHyperNetwork(CONDITION_DIM, build_mlp(PER_SAMPLE), embedding_dim=EMBEDDING_DIM,
                                             num_embeddings=NUM_EMBEDDINGS)  # fmt: skip

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        def one(x_i, c_i):
            return self.hnet(x_i[None], generate_params_kwargs={"x": c_i[None]})[0]

        return torch.func.vmap(one)(x, condition)

    def trained(self) -> Dict[str, torch.Tensor]:
        cell = self.hnet.embedding_module.rnn_cell
        return {"embedding": self.hnet.embedding_module.embedding.weight, "rnn.weight_ih": cell.weight_ih,
                "rnn.weight_hh": cell.weight_hh, "rnn.bias_ih": cell.bias_ih, "rnn.bias_hh": cell.bias_hh,
                "generator.weight": self.hnet.weight_generator.weight, "generator.bias": self.hnet.weight_generator.bias}  # fmt: skip


class HandRecurrentPerSample(nn.Module):
    """hyper-nn's dynamic math, batched: ``h = tanh(W_ih c + b_ih + W_hh 0 + b_hh)``, embeddings
    ``table * h``, the generator, one split of the ``(B, G)`` vector, ``baddbmm``."""

    def __init__(self):
        super().__init__()
        self.shapes = mlp_shapes(PER_SAMPLE)
        self.split_sizes, chunk_dim = split_sizes(self.shapes, NUM_EMBEDDINGS)
        self.embedding = nn.Embedding(NUM_EMBEDDINGS, EMBEDDING_DIM)
        self.weight_ih = nn.Parameter(torch.empty(NUM_EMBEDDINGS, CONDITION_DIM))
        self.weight_hh = nn.Parameter(torch.empty(NUM_EMBEDDINGS, NUM_EMBEDDINGS))
        self.bias_ih = nn.Parameter(torch.empty(NUM_EMBEDDINGS))
        self.bias_hh = nn.Parameter(torch.empty(NUM_EMBEDDINGS))
        self.generator = nn.Linear(EMBEDDING_DIM, chunk_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        hidden = torch.zeros(batch, NUM_EMBEDDINGS)
        gate = torch.tanh(F.linear(condition, self.weight_ih, self.bias_ih) + F.linear(hidden, self.weight_hh, self.bias_hh))
        flat = self.generator(self.embedding.weight * gate.unsqueeze(-1)).reshape(batch, -1)
        return batched_mlp(x, flat, self.split_sizes, self.shapes)

    def trained(self) -> Dict[str, torch.Tensor]:
        return {"embedding": self.embedding.weight, "rnn.weight_ih": self.weight_ih, "rnn.weight_hh": self.weight_hh,
                "rnn.bias_ih": self.bias_ih, "rnn.bias_hh": self.bias_hh, "generator.weight": self.generator.weight,
                "generator.bias": self.generator.bias}  # fmt: skip


def batched_mlp(x: torch.Tensor, flat: torch.Tensor, sizes: Sequence[int], shapes) -> torch.Tensor:
    """Per-sample ``Linear, ReLU, Linear`` from a ``(B, G)`` vector: one split, ``baddbmm``."""
    batch = x.shape[0]
    tensors = [piece.view(batch, *shape) for piece, shape in zip(torch.split(flat, sizes, dim=1), shapes)]
    h = x
    for i in range(0, len(tensors), 2):
        if i:
            h = F.relu(h)
        h = torch.baddbmm(tensors[i + 1].unsqueeze(1), h.unsqueeze(1), tensors[i].transpose(1, 2)).squeeze(1)
    return h


# ---------------------------------------------------------------- hyperlight


def hyperlight_pair(model: nn.Module, input_shapes: Dict[str, Tuple[int, ...]], encoding: Optional[str] = "cos|sin"):
    """``(hypernet, mainnet)``: hyperlight's ``HyperNet`` for every parameter of ``model``."""
    import hyperlight

    mainnet = hyperlight.hypernetize(model, parameters=list(model.parameters()))
    hypernet = hyperlight.HyperNet(input_shapes=input_shapes, output_shapes=mainnet.external_shapes(),
                                   hidden_sizes=[HIDDEN], encoding=encoding)  # fmt: skip
    return hypernet, mainnet


class HyperlightStatic(nn.Module):
    """hyperlight: ``HyperNet(h=0.5)`` (one input, cos|sin encoded, hidden [32]) generates
    every parameter; the model runs ``with mainnet.using_externals(params)``."""

    def __init__(self, sizes: Sequence[int], final_relu: bool):
        super().__init__()
        self.hypernet, mainnet = hyperlight_pair(build_mlp(sizes, final_relu), {"h": (1,)})
        self.__dict__["mainnet"] = mainnet  # no parameters of its own; kept out of the module tree
        self.register_buffer("h", torch.tensor([0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = self.hypernet(h=self.h)
        with self.mainnet.using_externals(params):
            return self.mainnet(x)

    def trained(self) -> Dict[str, torch.Tensor]:
        return dict(self.hypernet.backbone.named_parameters())


class HandBackbone(nn.Module):
    """hyperlight's generator by hand: cos|sin encoding (if ``encode``), ``Linear, LeakyReLU, Linear``."""

    def __init__(self, inputs: int, outputs: int, encode: bool = True):
        super().__init__()
        self.encode = encode
        self.block0_lin = nn.Linear(2 * inputs if encode else inputs, HIDDEN)
        self.output = nn.Linear(HIDDEN, outputs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.encode:
            z = torch.pi * z / 2
            z = torch.cat([torch.cos(z), torch.sin(z)], dim=-1)
        return self.output(F.leaky_relu(self.block0_lin(z)))


class HandHyperlightStatic(nn.Module):
    """hyperlight's static math by hand: the backbone, one split, ``F.linear``/``F.relu``."""

    def __init__(self, sizes: Sequence[int], final_relu: bool):
        super().__init__()
        self.final_relu, self.shapes = final_relu, mlp_shapes(sizes)
        self.split_sizes, _ = split_sizes(self.shapes, 1)
        self.backbone = HandBackbone(1, sum(self.split_sizes))
        self.register_buffer("h", torch.tensor([[0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.backbone(self.h).reshape(-1)
        tensors = [piece.view(shape) for piece, shape in zip(torch.split(flat, self.split_sizes), self.shapes)]
        for i in range(0, len(tensors), 2):
            x = F.linear(x, tensors[i], tensors[i + 1])
            if i != len(tensors) - 2 or self.final_relu:
                x = F.relu(x)
        return x

    def trained(self) -> Dict[str, torch.Tensor]:
        return dict(self.backbone.named_parameters())


class HyperlightPerSample(nn.Module):
    """hyperlight per sample: ``HyperNet(c=c_i)`` and ``using_externals`` under ``torch.func.vmap``.

    ``encoding=None``: the default cos|sin encoding checks its input's range with a
    data-dependent ``if tensor.any()``, which ``vmap`` refuses."""

    def __init__(self):
        super().__init__()
        self.hypernet, mainnet = hyperlight_pair(build_mlp(PER_SAMPLE), {"c": (CONDITION_DIM,)}, encoding=None)
        self.__dict__["mainnet"] = mainnet

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        def one(x_i, c_i):
            params = self.hypernet(c=c_i)
            with self.mainnet.using_externals(params):
                return self.mainnet(x_i[None])[0]

        return torch.func.vmap(one)(x, condition)

    def trained(self) -> Dict[str, torch.Tensor]:
        return dict(self.hypernet.backbone.named_parameters())


class HandHyperlightPerSample(nn.Module):
    """hyperlight's per-sample math, batched: the backbone on ``(B, C)``, split, ``baddbmm``."""

    def __init__(self):
        super().__init__()
        self.shapes = mlp_shapes(PER_SAMPLE)
        self.split_sizes, _ = split_sizes(self.shapes, 1)
        self.backbone = HandBackbone(CONDITION_DIM, sum(self.split_sizes), encode=False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return batched_mlp(x, self.backbone(condition), self.split_sizes, self.shapes)

    def trained(self) -> Dict[str, torch.Tensor]:
        return dict(self.backbone.named_parameters())


# ---------------------------------------------------------------- building and checking


def build(peer: str, workload: str, seed: int = 0) -> Dict[str, nn.Module]:
    """``{"peer": ..., "twin": ...}`` with the twin given the peer's initial values."""
    torch.manual_seed(seed)
    deep = workload.startswith("deep")
    sizes, final_relu = (DEEP, True) if deep else (SIZES, False)
    if peer == "hyper-nn":
        if workload == "per_sample":
            model, twin = HyperNNPerSample(), HandRecurrentPerSample()
        else:
            model, twin = HyperNNStatic(sizes, final_relu), HandStatic(EMBEDDING_DIM, NUM_EMBEDDINGS, sizes, final_relu=final_relu)
            assert model.hnet.weight_chunk_dim == twin.generator.out_features, "chunk sizes differ"
    else:
        if workload == "per_sample":
            model, twin = HyperlightPerSample(), HandHyperlightPerSample()
        else:
            model, twin = HyperlightStatic(sizes, final_relu), HandHyperlightStatic(sizes, final_relu)
            assert list(model.mainnet.external_shapes().values()) == list(twin.shapes), "layouts differ"
    if deep:  # He-sized generated weights (the default overflows over 48 layers)
        with torch.no_grad():
            flat = generated_flat(peer, model)
            factor = math.sqrt(2 / 64) / float(flat.std())
            last = list(model.trained().values())[-2:]  # the generator's (output layer's) weight and bias
            for tensor in last:
                tensor.mul_(factor)
    with torch.no_grad():
        reference = model.trained()
        for name, tensor in twin.trained().items():
            tensor.copy_(reference[name])
    return {"peer": model, "twin": twin}


def generated_flat(peer: str, model: nn.Module) -> torch.Tensor:
    if peer == "hyper-nn":
        return model.hnet.generate_params()[0]
    return torch.cat([t.reshape(-1) for t in model.hypernet(h=model.h).values()])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str, rtol: float = 1e-5) -> float:
    """``assert_close`` with an absolute tolerance relative to the tensor's scale; returns max|diff|."""
    atol = rtol * max(float(expected.detach().abs().max()), 1e-3)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)
    return float((actual - expected).detach().abs().max())


def check_equivalence(workload: str, models: Dict[str, nn.Module], batches: Sequence[Batch]) -> Dict[str, float]:
    """Peer == twin: outputs, loss, gradients of every trained tensor (outputs O(1) for ``deep``)."""
    batch = batches[0]
    outputs, grads = {}, {}
    for name, model in models.items():
        inputs = batch[:2] if workload == "per_sample" else batch[:1]
        outputs[name] = model(*inputs)
        trained = model.trained()
        loss = loss_of(workload, model, batch)
        grads[name] = dict(zip(trained, torch.autograd.grad(loss, list(trained.values()), allow_unused=True)))
    if workload.startswith("deep"):
        scale = float(outputs["peer"].detach().abs().max())
        assert math.isfinite(scale) and 1e-3 < scale < 1e3, f"outputs not O(1): max {scale}"
    diffs = {"max|out diff|": assert_close(outputs["twin"], outputs["peer"], "outputs differ")}
    assert set(grads["twin"]) == set(grads["peer"])
    worst = 0.0
    for key, grad in grads["peer"].items():
        mine = grads["twin"][key]
        if grad is None or mine is None:
            assert grad is None or not grad.any(), key
            continue
        worst = max(worst, assert_close(mine, grad, f"gradients of {key} differ", rtol=1e-4))
    diffs["max|grad diff|"] = worst
    return diffs


# ---------------------------------------------------------------- main


def rss_worker(peer: str, workload: str, impl: str) -> Dict:
    model = build(peer, workload)[impl]
    return rss_growth(runner(workload, model, make_batches(workload, 3)))


def benchmark(peer: str, workload: str, args: argparse.Namespace) -> Dict:
    """One row, or ``{"workload", "implementation", "na": reason}`` if the peer cannot run it."""
    label = f"{peer} {peer_version(peer)}"
    try:
        models = build(peer, workload)
        batches = make_batches(workload, 4)
        check = check_equivalence(workload, models, batches)
    except Exception as err:  # a peer that cannot run a workload: n/a with the reason
        traceback.print_exc()
        return {"workload": WORKLOADS[workload], "implementation": label, "na": f"{type(err).__name__}: {err}"[:300]}
    runs = {name: runner(workload, model, batches) for name, model in models.items()}
    steps = max(1, args.steps // 4) if workload == "per_sample" else args.steps
    times = interleaved_times(runs, args.rounds, steps, args.warmup, args.clock)
    memory = rss_in_subprocesses(__file__, ("peer", "twin"), ["--peer", peer, "--workload", workload]) if args.rss else {}
    row = make_row(WORKLOADS[workload], label, f"hand-written twin of {peer}'s math", times, "peer", "twin", None, memory)
    row.update(peer=peer, key=workload, equivalence=check, times=times, clock=args.clock, rounds=args.rounds,
               steps_per_round=steps)  # fmt: skip
    return row


def peer_version(peer: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(peer)
    except metadata.PackageNotFoundError:
        return "?"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time hyper-nn / hyperlight against hand-written twins of their own math.")
    parser.add_argument("--peer", choices=PEERS, required=True)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), nargs="+", default=list(WORKLOADS))
    add_round_args(parser, rounds=15, steps=20, warmup=5)
    parser.add_argument("--rss", action="store_true", help="also measure peak-RSS growth over 3 calls in fresh processes")
    parser.add_argument("--rss-worker", choices=("peer", "twin"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # functorch's deprecation warnings, vmap fallback notices
    if args.rss_worker:
        print(json.dumps(rss_worker(args.peer, args.workload[0], args.rss_worker)))
        return 0
    if args.peer == "hyper-nn":
        import hypernn  # in a peer's environment: hyper-nn's, never this repository's

        if hasattr(hypernn, "hypernetize"):
            sys.exit("this is the repository's hypernn, not hyper-nn: run peer_step.py with .peers/hyper-nn/bin/python")
    print(f"{args.peer} {peer_version(args.peer)}, torch {torch.__version__}, {platform.machine()}, "
          f"threads={torch.get_num_threads()}")
    rows = [benchmark(args.peer, workload, args) for workload in args.workload]
    done = [row for row in rows if "na" not in row]
    if done:
        print(format_rows(done))
    for row in rows:
        if "na" in row:
            print(f"  {row['workload']}: {row['implementation']}: n/a ({row['na']})")
    if args.json:
        meta = {"peer": args.peer, "version": peer_version(args.peer), "torch": torch.__version__,
                "python": sys.version.split()[0], "threads": torch.get_num_threads()}  # fmt: skip
        write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
