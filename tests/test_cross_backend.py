"""The same hypernetwork in torch, flax linen and flax NNX computes the same numbers.

One architecture, an MLP 8-16-4 with ReLU, every parameter generated, in the ``global``
and the ``per_tensor`` layout, built with :func:`hypernn.hypernetize` in each backend:

* torch: ``nn.Sequential(Linear(8, 16), ReLU(), Linear(16, 4))``;
* linen: ``Dense(16)`` then ``Dense(4)`` (``Dense_0``, ``Dense_1``);
* NNX: ``nnx.Sequential(Linear(8, 16), relu, Linear(16, 4))``.

The backends order the generated tensors differently (torch: registration order,
``weight`` before ``bias``; flax: sorted keys, ``bias`` before ``kernel``) and store the
weights transposed from one another (torch ``Linear.weight`` is ``(out, in)``, a flax
kernel ``(in, out)``), so one flat vector does not mean the same network in all three.
The tests therefore compare what *is* meant to agree, all from identical numpy values:

1. the layout arithmetic (``num_params``, ``generated_size``, ``chunk_dim``, ``unused``,
   the chunk count) for the same model and options (the NNX hypernetwork built under
   ``nnx.eval_shape`` there, to skip compiling initialisers for every new shape);
2. the generator stage: the same embedding table and generator weights give the same
   flat vector;
3. the target stage: the same target weights, laid out in each backend's own slot order
   (transposed where needed) as a compact or full-length ``generated_params``, give the
   same outputs, and the same gradients with respect to those weights;
4. end to end: each backend's ``hnet(x)`` is the numpy MLP whose weights are cut from
   the common flat vector by that backend's layout.

Everything is float32; agreement is to 1e-5. The hypernetworks use ``init="default"``:
the hyperfan start map targets each framework's own layer init, which differ by design.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

from hypernn import hypernetize  # noqa: E402

SIZES = (8, 16, 4)
EMBEDDING_DIM = 5
NUM_EMBEDDINGS = 7
BATCH = 6
TOL = dict(rtol=1e-5, atol=1e-5)
LAYOUTS = ("global", "per_tensor")
BACKENDS = ("torch", "linen", "nnx")

#: canonical tensors, torch-style (``W`` is ``(out, in)``), by layer index
CANONICAL = ("W0", "b0", "W1", "b1")

#: each backend's generated tensor name -> (canonical name, stored transposed?)
NAMES: Dict[str, Dict[str, Tuple[str, bool]]] = {
    "torch": {"0.weight": ("W0", False), "0.bias": ("b0", False), "2.weight": ("W1", False), "2.bias": ("b1", False)},
    "linen": {"Dense_0.kernel": ("W0", True), "Dense_0.bias": ("b0", False),
              "Dense_1.kernel": ("W1", True), "Dense_1.bias": ("b1", False)},
    "nnx": {"layers.0.kernel": ("W0", True), "layers.0.bias": ("b0", False),
            "layers.2.kernel": ("W1", True), "layers.2.bias": ("b1", False)},
}  # fmt: skip

#: the slot order each backend is expected to use (checked, so a change is noticed)
SLOT_ORDER = {
    "torch": ["0.weight", "0.bias", "2.weight", "2.bias"],
    "linen": ["Dense_0.bias", "Dense_0.kernel", "Dense_1.bias", "Dense_1.kernel"],
    "nnx": ["layers.0.bias", "layers.0.kernel", "layers.2.bias", "layers.2.kernel"],
}


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(nn.Dense(SIZES[1])(x))
        return nn.Dense(SIZES[2])(x)


# ---------------------------------------------------------------- building


class Backend:
    """One backend's hypernetwork behind a common numpy-in, numpy-out interface."""

    name: str
    hnet: object

    def layout(self):
        return self.hnet.layout

    def load_generator(self, embedding: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set the embedding table ``(E, D)`` and the generator ``weight (C, D)``, ``bias (C,)``."""
        raise NotImplementedError

    def generate(self) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: np.ndarray, generated_params: np.ndarray = None) -> np.ndarray:
        raise NotImplementedError

    def grad(self, x: np.ndarray, generated_params: np.ndarray) -> np.ndarray:
        """Gradient of ``sum(output ** 2)`` with respect to ``generated_params``."""
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, **options):
        model = torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(), torch.nn.Linear(SIZES[1], SIZES[2]))
        self.hnet = hypernetize(model, **options)

    def generator_shapes(self):
        h = self.hnet
        return {"embedding": tuple(h.embedding_module.weight.shape), "kernel": tuple(h.weight_generator.weight.shape[::-1]),
                "bias": tuple(h.weight_generator.bias.shape)}  # fmt: skip

    def load_generator(self, embedding, weight, bias):
        with torch.no_grad():
            self.hnet.embedding_module.weight.copy_(torch.from_numpy(embedding))
            self.hnet.weight_generator.weight.copy_(torch.from_numpy(weight))
            self.hnet.weight_generator.bias.copy_(torch.from_numpy(bias))

    def generate(self):
        with torch.no_grad():
            return self.hnet.generate_params()[0].numpy()

    def forward(self, x, generated_params=None):
        kwargs = {} if generated_params is None else {"generated_params": torch.from_numpy(generated_params)}
        with torch.no_grad():
            return self.hnet(torch.from_numpy(x), **kwargs).numpy()

    def grad(self, x, generated_params):
        flat = torch.from_numpy(generated_params).requires_grad_(True)
        (self.hnet(torch.from_numpy(x), generated_params=flat) ** 2).sum().backward()
        return flat.grad.numpy()


class LinenBackend(Backend):
    name = "linen"

    def __init__(self, **options):
        example = jnp.zeros((1, SIZES[0]), jnp.float32)
        self.hnet = hypernetize(LinenMLP(), example_inputs=(example,), **options)
        self._variables = None

    @property
    def variables(self):
        if self._variables is None:  # initialised on first use (the layout tests need none)
            self._variables = self.hnet.init(jax.random.key(0), jnp.zeros((1, SIZES[0]), jnp.float32))
        return self._variables

    @variables.setter
    def variables(self, value):
        self._variables = value

    def generator_shapes(self):
        params = self.variables["params"]
        return {"embedding": params["embedding_module"]["embedding"].shape,
                "kernel": params["weight_generator"]["kernel"].shape, "bias": params["weight_generator"]["bias"].shape}  # fmt: skip

    def load_generator(self, embedding, weight, bias):
        params = dict(self.variables["params"])
        assert sorted(params) == ["embedding_module", "weight_generator"], "all params are generated"
        params["embedding_module"] = {"embedding": jnp.asarray(embedding)}
        params["weight_generator"] = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}
        self.variables = {**self.variables, "params": params}

    def generate(self):
        return np.asarray(self.hnet.apply(self.variables, method="generate_params")[0])

    def forward(self, x, generated_params=None):
        kwargs = {} if generated_params is None else {"generated_params": jnp.asarray(generated_params)}
        return np.asarray(self.hnet.apply(self.variables, jnp.asarray(x), **kwargs))

    def grad(self, x, generated_params):
        def loss(flat):
            return (self.hnet.apply(self.variables, jnp.asarray(x), generated_params=flat) ** 2).sum()

        return np.asarray(jax.grad(loss)(jnp.asarray(generated_params)))


class NNXBackend(Backend):
    name = "nnx"

    def __init__(self, abstract: bool = False, **options):
        def build():
            model = nnx.Sequential(nnx.Linear(SIZES[0], SIZES[1], rngs=nnx.Rngs(0)), nnx.relu,
                                   nnx.Linear(SIZES[1], SIZES[2], rngs=nnx.Rngs(1)))  # fmt: skip
            return hypernetize(model, rngs=nnx.Rngs(2), **options)

        # abstract: shapes only (no initialiser runs, so no eager compiles per new shape);
        # the layout is plain Python and identical either way
        self.hnet = nnx.eval_shape(build) if abstract else build()

    def generator_shapes(self):
        h = self.hnet
        return {"embedding": h.embedding_module.embedding.shape, "kernel": h.weight_generator.kernel.shape,
                "bias": h.weight_generator.bias.shape}  # fmt: skip

    def load_generator(self, embedding, weight, bias):
        self.hnet.embedding_module.embedding.set_value(jnp.asarray(embedding))
        self.hnet.weight_generator.kernel.set_value(jnp.asarray(weight.T))
        self.hnet.weight_generator.bias.set_value(jnp.asarray(bias))

    def generate(self):
        return np.asarray(self.hnet.generate_params()[0])

    def forward(self, x, generated_params=None):
        kwargs = {} if generated_params is None else {"generated_params": jnp.asarray(generated_params)}
        return np.asarray(self.hnet(jnp.asarray(x), **kwargs))

    def grad(self, x, generated_params):
        def loss(flat):
            return (self.hnet(jnp.asarray(x), generated_params=flat) ** 2).sum()

        return np.asarray(jax.grad(loss)(jnp.asarray(generated_params)))


FACTORIES: Dict[str, Callable[..., Backend]] = {"torch": TorchBackend, "linen": LinenBackend, "nnx": NNXBackend}


def build_all(abstract: bool = False, **options) -> Dict[str, Backend]:
    # hyper-nn's computation, the same in every backend: no hyperfan start map (whose
    # targets follow each framework's own init and so differ by design)
    options.setdefault("init", "default")
    built = {name: FACTORIES[name](**options) for name in BACKENDS if name != "nnx"}
    built["nnx"] = NNXBackend(abstract=abstract, **options)
    return {name: built[name] for name in BACKENDS}


@pytest.fixture(scope="module", params=LAYOUTS)
def backends(request) -> Dict[str, Backend]:
    return build_all(embedding_dim=EMBEDDING_DIM, num_embeddings=NUM_EMBEDDINGS, layout=request.param)


# ---------------------------------------------------------------- numpy side


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def canonical_weights(seed: int = 0) -> Dict[str, np.ndarray]:
    """One set of target weights, torch-style shapes, float32."""
    r = rng(seed)
    shapes = {"W0": (SIZES[1], SIZES[0]), "b0": (SIZES[1],), "W1": (SIZES[2], SIZES[1]), "b1": (SIZES[2],)}
    return {k: (0.5 * r.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def reference_mlp(x: np.ndarray, w: Dict[str, np.ndarray]) -> np.ndarray:
    """The MLP in float64 numpy."""
    f = {k: v.astype(np.float64) for k, v in w.items()}
    hidden = np.maximum(x.astype(np.float64) @ f["W0"].T + f["b0"], 0.0)
    return hidden @ f["W1"].T + f["b1"]


def backend_tensor(backend: str, name: str, weights: Dict[str, np.ndarray]) -> np.ndarray:
    """The canonical tensor for ``backend``'s generated tensor ``name``, in its storage shape."""
    canonical, transposed = NAMES[backend][name]
    tensor = weights[canonical]
    return tensor.T if transposed else tensor


def laid_out(backend: Backend, weights: Dict[str, np.ndarray], full: bool) -> np.ndarray:
    """``weights`` as ``backend``'s generated_params: compact (end to end, in its slot
    order) or full length (at its slot offsets; the gaps hold junk that must be ignored)."""
    layout = backend.layout()
    if not full:
        return np.concatenate([backend_tensor(backend.name, s.name, weights).reshape(-1) for s in layout.slots])
    flat = np.full(layout.generated_size, 1e3, np.float32)  # junk in the unused values
    for slot in layout.slots:
        tensor = backend_tensor(backend.name, slot.name, weights)
        assert tensor.shape == slot.shape, (backend.name, slot.name)
        flat[slot.offset : slot.offset + slot.size] = tensor.reshape(-1)
    return flat


def cut(backend: Backend, flat: np.ndarray) -> Dict[str, np.ndarray]:
    """Canonical tensors cut from a full-length ``flat`` vector by ``backend``'s layout."""
    out = {}
    for slot in backend.layout().slots:
        canonical, transposed = NAMES[backend.name][slot.name]
        tensor = flat[slot.offset : slot.offset + slot.size].reshape(slot.shape)
        out[canonical] = tensor.T if transposed else tensor
    assert sorted(out) == sorted(CANONICAL)
    return out


def unpermute(backend: Backend, flat: np.ndarray) -> Dict[str, np.ndarray]:
    """Canonical tensors from a compact vector in ``backend``'s slot order."""
    out, position = {}, 0
    for slot in backend.layout().slots:
        canonical, transposed = NAMES[backend.name][slot.name]
        tensor = flat[position : position + slot.size].reshape(slot.shape)
        out[canonical] = tensor.T if transposed else tensor
        position += slot.size
    return out


def inputs(seed: int = 1) -> np.ndarray:
    return rng(seed).standard_normal((BATCH, SIZES[0])).astype(np.float32)


def generator_values(layout, seed: int = 2) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embedding ``(E, D)``, generator weight ``(C, D)`` (torch-style) and bias ``(C,)``."""
    r = rng(seed)
    embedding = r.standard_normal((layout.num_chunks, EMBEDDING_DIM)).astype(np.float32)
    weight = (0.3 * r.standard_normal((layout.chunk_dim, EMBEDDING_DIM))).astype(np.float32)
    bias = (0.1 * r.standard_normal(layout.chunk_dim)).astype(np.float32)
    return embedding, weight, bias


# ---------------------------------------------------------------- 1. layout arithmetic


def layout_numbers(layout) -> Dict[str, int]:
    return {"num_params": layout.num_params, "generated_size": layout.generated_size, "chunk_dim": layout.chunk_dim,
            "unused": layout.unused, "num_chunks": layout.num_chunks}  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        dict(layout="global", num_embeddings=7),
        dict(layout="global", num_embeddings=212),  # one value per chunk, none unused
        dict(layout="global", chunk_dim=50),
        dict(layout="per_tensor", num_embeddings=7),
        dict(layout="per_tensor", num_embeddings=4),  # one chunk per tensor
        dict(layout="per_tensor", chunk_dim=50),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_layout_arithmetic_agrees(options):
    built = build_all(embedding_dim=EMBEDDING_DIM, abstract=True, **options)
    numbers = {name: layout_numbers(b.layout()) for name, b in built.items()}
    assert numbers["torch"] == numbers["linen"] == numbers["nnx"], numbers
    assert numbers["torch"]["num_params"] == 8 * 16 + 16 + 16 * 4 + 4
    for name, backend in built.items():
        assert [s.name for s in backend.layout().slots] == SLOT_ORDER[name]
        assert sorted(s.size for s in backend.layout().slots) == [4, 16, 64, 128]
        h = backend.hnet
        assert (h.num_embeddings, h.weight_chunk_dim, h.num_target_parameters) == (
            numbers[name]["num_chunks"], numbers[name]["chunk_dim"], numbers[name]["num_params"])  # fmt: skip


def test_generator_parameter_shapes_agree(backends):
    layout = backends["torch"].layout()
    expected = {"embedding": (layout.num_chunks, EMBEDDING_DIM), "kernel": (EMBEDDING_DIM, layout.chunk_dim),
                "bias": (layout.chunk_dim,)}  # fmt: skip
    for name, backend in backends.items():
        assert {k: tuple(v) for k, v in backend.generator_shapes().items()} == expected, name


# ---------------------------------------------------------------- 2. generator stage


def test_generator_stage_agrees(backends):
    layout = backends["torch"].layout()
    embedding, weight, bias = generator_values(layout)
    expected = (embedding.astype(np.float64) @ weight.T.astype(np.float64) + bias).reshape(-1)
    flats = {}
    for name, backend in backends.items():
        backend.load_generator(embedding, weight, bias)
        flats[name] = backend.generate()
        assert flats[name].shape == (layout.generated_size,) and flats[name].dtype == np.float32, name
        np.testing.assert_allclose(flats[name], expected, **TOL, err_msg=name)
    np.testing.assert_allclose(flats["linen"], flats["torch"], **TOL)
    np.testing.assert_allclose(flats["nnx"], flats["torch"], **TOL)


# ---------------------------------------------------------------- 3. target stage


@pytest.mark.parametrize("full", [False, True], ids=["compact", "full"])
def test_target_stage_outputs_agree(backends, full):
    weights = canonical_weights()
    x = inputs()
    expected = reference_mlp(x, weights)
    outputs = {}
    for name, backend in backends.items():
        generated = laid_out(backend, weights, full)
        length = backend.layout().generated_size if full else backend.layout().num_params
        assert generated.shape == (length,)
        outputs[name] = backend.forward(x, generated)
        assert outputs[name].shape == (BATCH, SIZES[-1]) and outputs[name].dtype == np.float32, name
        np.testing.assert_allclose(outputs[name], expected, **TOL, err_msg=name)
    np.testing.assert_allclose(outputs["linen"], outputs["torch"], **TOL)
    np.testing.assert_allclose(outputs["nnx"], outputs["torch"], **TOL)


def test_target_stage_gradients_agree(backends):
    weights = canonical_weights(seed=3)
    x = inputs(seed=4)
    grads: Dict[str, Dict[str, np.ndarray]] = {}
    for name, backend in backends.items():
        grads[name] = unpermute(backend, backend.grad(x, laid_out(backend, weights, full=False)))
    for key in CANONICAL:
        np.testing.assert_allclose(grads["linen"][key], grads["torch"][key], **TOL, err_msg=key)
        np.testing.assert_allclose(grads["nnx"][key], grads["torch"][key], **TOL, err_msg=key)
    # and against the hand-derived gradient of sum(out ** 2)
    f = {k: v.astype(np.float64) for k, v in weights.items()}
    pre = x.astype(np.float64) @ f["W0"].T + f["b0"]
    hidden = np.maximum(pre, 0.0)
    d_out = 2 * (hidden @ f["W1"].T + f["b1"])
    d_pre = (d_out @ f["W1"]) * (pre > 0)
    hand = {"W1": d_out.T @ hidden, "b1": d_out.sum(0), "W0": d_pre.T @ x, "b0": d_pre.sum(0)}
    for key in CANONICAL:
        np.testing.assert_allclose(grads["torch"][key], hand[key], rtol=1e-4, atol=1e-4, err_msg=key)


# ---------------------------------------------------------------- 4. end to end


def test_end_to_end_matches_each_layout(backends):
    layout = backends["torch"].layout()
    generator = generator_values(layout, seed=5)
    x = inputs(seed=6)
    flat = (generator[0].astype(np.float64) @ generator[1].T.astype(np.float64) + generator[2]).reshape(-1)
    seen: List[np.ndarray] = []
    for name, backend in backends.items():
        backend.load_generator(*generator)
        expected = reference_mlp(x, {k: v.astype(np.float32) for k, v in cut(backend, flat).items()})
        out = backend.forward(x)
        np.testing.assert_allclose(out, expected, **TOL, err_msg=name)
        seen.append(out)
    # the slot orders differ, so the same flat vector is a different network per family
    assert not np.allclose(seen[0], seen[1])
    np.testing.assert_allclose(seen[1], seen[2], **TOL)  # linen and NNX: same order
