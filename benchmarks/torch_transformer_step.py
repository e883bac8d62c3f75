"""Selective hypernetization: a small transformer whose attention projections alone are generated.

The model is ``nn.TransformerEncoder`` of 2 ``nn.TransformerEncoderLayer(d_model=64,
nhead=4, dim_feedforward=256, dropout=0, batch_first=True)``; batch 32, sequence 16. Only
the attention projection weights are generated, ``targets=TARGETS`` (a regex over
``layers.N.self_attn.in_proj_weight`` and ``layers.N.self_attn.out_proj.weight``: 4 tensors,
32,768 values); every other parameter (biases, feed-forward, layer norms) stays an ordinary
trained parameter of the hypernetwork. ``D=32, E=64`` unless told.

One step: forward, MSE loss against a random target, backward, ``Adam.step()`` over every
trained tensor, ``zero_grad()``. The hypernetwork uses the default ``init="hyperfan"`` (a
per-tensor affine map after the generator). Two hand-written twins, with the same initial
values and that start map written by hand (per-element scale and shift vectors copied from
the hypernetwork, ``shift + scale * raw`` on the flat vector):

* ``functional``: embedding table, generator, one ``torch.split``; then the encoder written
  as functions: ``F.linear`` to q, k, v, ``F.scaled_dot_product_attention`` over 4 heads,
  ``F.linear`` out, residual + ``F.layer_norm``, ``F.linear``/``F.relu`` feed-forward,
  residual + ``F.layer_norm``;
* ``same_model``: the same generation, the 4 tensors written by hand into the user's own
  ``nn.TransformerEncoder``'s parameter slots, then the model is called (it pays the
  model's own module overhead, which hypernn cannot remove: the ratio against it is
  hypernn's own work).

Target: at most 1.05x (issue 7's static torch step target). Before timing, the script
asserts equal outputs, loss, gradients of every trained tensor, and parameters after 3
Adam steps (but the key part of ``in_proj_bias``: softmax is blind to it, so its gradient
is rounding noise, which Adam turns into steps of ``lr`` in either direction). Timing interleaves the three round by round; process CPU time by default,
torch on one thread. ``--rss``: each one's peak-RSS growth over its first 3 steps, each in
a fresh subprocess.

Usage::

    python benchmarks/torch_transformer_step.py                   # ~1 min
    python benchmarks/torch_transformer_step.py --rounds 21 --rss --json /tmp/transformer.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import re
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hypernn import hypernetize
from common import add_round_args, check_round_args, format_rows, interleaved_times, make_row, rss_growth
from common import rss_in_subprocesses, write_json
from twins import SameModelTwin, StartMapMixin, copy_start_map, split_sizes

TARGET_RATIO = 1.05
D_MODEL, HEADS, FEEDFORWARD, LAYERS, BATCH, SEQ = 64, 4, 256, 2, 32, 16
TARGETS = r"layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)"
IMPLS = ("hypernn", "functional", "same_model")
BASELINES = {"functional": "functional twin (split + F.linear/SDPA/F.layer_norm)",
             "same_model": "same-model twin (own nn.TransformerEncoder, slots filled by hand)"}  # fmt: skip

Batch = Tuple[torch.Tensor, torch.Tensor]


def build_model() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FEEDFORWARD, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)


def generated_names(model: nn.Module) -> List[str]:
    """The selected names, re-derived here: ``TARGETS`` over ``named_parameters`` order."""
    return [name for name, _ in model.named_parameters() if re.fullmatch(TARGETS, name)]


class FunctionalTransformer(StartMapMixin, nn.Module):
    """The selectively hypernetized encoder written as functions (see module doc)."""

    def __init__(self, model: nn.Module, embedding_dim: int, num_embeddings: int):
        super().__init__()
        named = dict(model.named_parameters())
        self.names = generated_names(model)
        self.shapes = [tuple(named[name].shape) for name in self.names]
        self.split_sizes, chunk_dim = split_sizes(self.shapes, num_embeddings)
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.generator = nn.Linear(embedding_dim, chunk_dim)
        self.register_buffer("index", torch.arange(num_embeddings), persistent=False)
        self._no_start_map()
        self.other_names = [name for name in named if name not in self.names]
        self.others = nn.ParameterList([nn.Parameter(named[name].detach().clone()) for name in self.other_names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.start_map(self.generator(self.embedding(self.index)).reshape(-1))
        p = dict(zip(self.names, (piece.view(shape) for piece, shape in zip(torch.split(flat, self.split_sizes), self.shapes))))
        p.update(zip(self.other_names, self.others))
        batch, seq, width = x.shape
        for i in range(LAYERS):
            prefix = f"layers.{i}."
            qkv = F.linear(x, p[prefix + "self_attn.in_proj_weight"], p[prefix + "self_attn.in_proj_bias"])
            q, k, v = qkv.view(batch, seq, 3, HEADS, width // HEADS).permute(2, 0, 3, 1, 4)
            attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, seq, width)
            attention = F.linear(attention, p[prefix + "self_attn.out_proj.weight"], p[prefix + "self_attn.out_proj.bias"])
            x = F.layer_norm(x + attention, (width,), p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
            hidden = F.relu(F.linear(x, p[prefix + "linear1.weight"], p[prefix + "linear1.bias"]))
            x = F.layer_norm(x + F.linear(hidden, p[prefix + "linear2.weight"], p[prefix + "linear2.bias"]), (width,),
                             p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])  # fmt: skip
        return x


def named_trained(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every trained tensor by a common name: ``embedding``, ``generator.weight``,
    ``generator.bias`` and the model's own parameter names."""
    if hasattr(model, "weight_generator"):
        out = {"embedding": model.embedding_module.weight, "generator.weight": model.weight_generator.weight,
               "generator.bias": model.weight_generator.bias}  # fmt: skip
        out.update({name: p for name, p in model.target_network.named_parameters()})
    else:
        out = {"embedding": model.embedding.weight, "generator.weight": model.generator.weight,
               "generator.bias": model.generator.bias}  # fmt: skip
        out.update(zip(model.other_names, model.others if isinstance(model, FunctionalTransformer) else model.model_params))
    assert len(out) == len(list(model.parameters())), "trained tensors missed"
    return out


def build_all(embedding_dim: int, num_embeddings: int, seed: int = 0) -> Dict[str, nn.Module]:
    """The hypernetwork and both twins, all with the hypernetwork's initial values."""
    torch.manual_seed(seed)
    model = build_model()
    hnet = hypernetize(model, embedding_dim=embedding_dim, num_embeddings=num_embeddings, targets=TARGETS)
    functional = FunctionalTransformer(model, embedding_dim, num_embeddings)
    same = SameModelTwin(build_model(), embedding_dim, num_embeddings, names=generated_names(model))
    offsets = [0]
    for shape in functional.shapes:
        offsets.append(offsets[-1] + shape[0] * shape[1])
    assert [(s.name, s.offset, s.shape) for s in hnet.layout.slots] == list(
        zip(functional.names, offsets, functional.shapes)), "layouts differ"
    assert functional.generator.out_features == hnet.layout.chunk_dim
    reference = named_trained(hnet)
    with torch.no_grad():
        for twin in (functional, same):
            for name, tensor in named_trained(twin).items():
                tensor.copy_(reference[name])
    for twin in (functional, same):
        copy_start_map(hnet, twin)
    return {"hypernn": hnet, "functional": functional, "same_model": same}


def make_batches(count: int, seed: int = 1) -> List[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, SEQ, D_MODEL, generator=generator), torch.randn(BATCH, SEQ, D_MODEL, generator=generator))
            for _ in range(count)]  # fmt: skip


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
    x, target = batch
    loss = F.mse_loss(model(x), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def check_equivalence(models: Dict[str, nn.Module], batches: List[Batch]) -> Dict[str, float]:
    """Twins == hypernn: outputs, loss, gradients of every trained tensor; parameters after 3
    Adam steps (the models are left after them). Returns the largest differences."""
    x, target = batches[0]
    reference = models["hypernn"](x)
    assert torch.isfinite(reference).all()
    ref_named = named_trained(models["hypernn"])
    ref_grads = dict(zip(ref_named, torch.autograd.grad(F.mse_loss(reference, target), list(ref_named.values()))))
    diffs = {}
    for name in IMPLS[1:]:
        out = models[name](x)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5, msg=f"{name}: outputs differ")
        named = named_trained(models[name])
        grads = dict(zip(named, torch.autograd.grad(F.mse_loss(out, target), list(named.values()))))
        assert set(grads) == set(ref_grads), (name, set(grads) ^ set(ref_grads))
        for key, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[key], rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {key} differs")
        diffs[f"{name}: max|out diff|"] = float((out - reference).detach().abs().max())
        diffs[f"{name}: max|grad diff|"] = max(float((g - ref_grads[k]).abs().max()) for k, g in grads.items())
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    for batch in batches[:3]:
        losses = {name: train_step(models[name], optimizers[name], batch) for name in IMPLS}
        for name in IMPLS[1:]:
            torch.testing.assert_close(losses[name], losses["hypernn"], rtol=1e-5, atol=1e-6, msg=f"{name}: losses differ")
    ref_named = named_trained(models["hypernn"])
    for name in IMPLS[1:]:
        for key, tensor in named_trained(models[name]).items():
            reference = ref_named[key]
            if key.endswith("in_proj_bias"):  # the key bias: softmax ignores it, its gradient is rounding noise,
                keep = torch.ones_like(tensor, dtype=torch.bool)  # which Adam scales up to steps of lr
                keep[D_MODEL : 2 * D_MODEL] = False
                tensor, reference = tensor[keep], reference[keep]
            torch.testing.assert_close(tensor, reference, rtol=1e-4, atol=1e-5, msg=f"{name}: {key} differs after 3 steps")
    return diffs


def runner(model: nn.Module, batches: List[Batch]) -> Callable[[], object]:
    optimizer, state = make_optimizer(model), {"i": 0}

    def run() -> object:
        state["i"] += 1
        return train_step(model, optimizer, batches[state["i"] % len(batches)])

    return run


def rss_worker(impl: str, embedding_dim: int, num_embeddings: int) -> Dict:
    """In a fresh process: one implementation's peak-RSS growth over its first 3 steps."""
    return rss_growth(runner(build_all(embedding_dim, num_embeddings)[impl], make_batches(3)))


def benchmark(args: argparse.Namespace) -> List[Dict]:
    models = build_all(args.embedding_dim, args.num_embeddings)
    batches = make_batches(4)
    check = check_equivalence(models, batches)
    runs = {name: runner(models[name], batches) for name in IMPLS}
    times = interleaved_times(runs, args.rounds, args.steps, args.warmup, args.clock)
    memory = {}
    if args.rss:
        memory = rss_in_subprocesses(__file__, IMPLS, ["--embedding-dim", str(args.embedding_dim),
                                                        "--num-embeddings", str(args.num_embeddings)])  # fmt: skip
    rows = []
    for baseline in IMPLS[1:]:
        row = make_row("transformer, attention projections generated, step", "hypernn", BASELINES[baseline], times,
                       "hypernn", baseline, TARGET_RATIO, memory)  # fmt: skip
        row.update(times=times, equivalence=check, embedding_dim=args.embedding_dim, num_embeddings=args.num_embeddings,
                   chunk_dim=models["hypernn"].layout.chunk_dim, clock=args.clock, rounds=args.rounds,
                   steps_per_round=args.steps)  # fmt: skip
        rows.append(row)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a training step of a 2-layer nn.TransformerEncoder (d_model 64, 4 heads, batch 32, seq 16) "
        "whose attention projections alone are generated, against a functional and a same-model hand-written twin.",
    )
    parser.add_argument("--embedding-dim", type=int, default=32, metavar="D", help="embedding width (default: 32)")
    parser.add_argument("--num-embeddings", type=int, default=64, metavar="E", help="chunk embeddings (default: 64)")
    add_round_args(parser, rounds=15, steps=10, warmup=5)
    parser.add_argument("--rss", action="store_true",
                        help="also measure each implementation's peak-RSS growth over 3 steps in a fresh subprocess")
    parser.add_argument("--rss-worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_worker, args.embedding_dim, args.num_embeddings)))
        return 0
    print(f"torch {torch.__version__}, {platform.machine()}, threads={torch.get_num_threads()}, {LAYERS}-layer "
          f"TransformerEncoder d_model {D_MODEL}, {HEADS} heads, ff {FEEDFORWARD}, batch {BATCH}, seq {SEQ}; "
          f"generated: {TARGETS}")  # fmt: skip
    rows = benchmark(args)
    print(format_rows(rows), flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
                "targets": TARGETS, "batch": BATCH, "seq": SEQ}  # fmt: skip
        write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
