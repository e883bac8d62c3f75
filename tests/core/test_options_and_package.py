"""Option validation, the error hierarchy and the framework-free import (no framework used)."""

import subprocess
import sys

import pytest

import hypernn
from hypernn import errors
from hypernn.errors import ConfigurationError, OptionTypeError, UnsupportedModelError
from hypernn.options import HypernetizeOptions


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(embedding_dim=0, num_embeddings=2), ConfigurationError, r"`embedding_dim` must be a positive int; got 0\."),
        (dict(embedding_dim=-3, num_embeddings=2), ConfigurationError, r"`embedding_dim` must be a positive int; got -3"),
        (dict(embedding_dim=2.5, num_embeddings=2), OptionTypeError, r"`embedding_dim` must be a positive int; got 2\.5 of type float"),
        (dict(embedding_dim=True, num_embeddings=2), OptionTypeError, r"`embedding_dim` must be a positive int; got True of type bool"),
        (dict(embedding_dim=4, num_embeddings=0), ConfigurationError, r"`num_embeddings` must be a positive int; got 0"),
        (dict(embedding_dim=4, num_embeddings="8"), OptionTypeError, r"`num_embeddings` must be a positive int or None; got '8'"),
        (dict(embedding_dim=4, chunk_dim=-1), ConfigurationError, r"`chunk_dim` must be a positive int; got -1"),
        (dict(embedding_dim=4), ConfigurationError, r"pass `num_embeddings` .* or `chunk_dim`"),
        (dict(embedding_dim=4, num_embeddings=2, layout="rows"), ConfigurationError, r"`layout` must be one of \('global', 'per_tensor'\); got 'rows'"),
        (dict(embedding_dim=4, num_embeddings=2, targets=7), OptionTypeError, r"`targets` must be None, a regex string"),
        (dict(embedding_dim=4, num_embeddings=2, generator_factory="linear"), OptionTypeError, r"`generator_factory` must be a callable"),
        (dict(embedding_dim=4, num_embeddings=2, embedding_factory=3), OptionTypeError, r"`embedding_factory` must be a callable"),
        (dict(embedding_dim=4, num_embeddings=2, inplace="yes"), OptionTypeError, r"`inplace` must be a bool; got 'yes'"),
    ],
)
def test_bad_options_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        HypernetizeOptions(**kwargs)
    with pytest.raises(error, match=message):  # the public entry point validates before any model is seen
        hypernn.hypernetize(**kwargs)


def test_unknown_or_missing_options_are_named():
    with pytest.raises(OptionTypeError, match=r"unknown options \['embeding_dim'\]; valid options: embedding_dim, num_embeddings"):
        hypernn.hypernetize(embeding_dim=4, num_embeddings=2)
    with pytest.raises(OptionTypeError, match=r"needs `embedding_dim=`"):
        hypernn.hypernetize(num_embeddings=2)


@pytest.mark.parametrize("model", [3, "mlp", None.__class__, object()])
def test_non_models_are_rejected(model):
    with pytest.raises(UnsupportedModelError, match=r"`model` must be a torch\.nn\.Module, flax\.linen\.Module or flax\.nnx\.Module \(instance or subclass\); got"):
        hypernn.hypernetize(model, embedding_dim=2, num_embeddings=2)
    with pytest.raises(UnsupportedModelError, match=r"`model` must be"):
        hypernn.select(model)


def test_transform_repr_shows_non_default_options():
    transform = hypernn.hypernetize(embedding_dim=4, num_embeddings=8, layout="per_tensor", targets=["fc"])
    assert repr(transform) == "Hypernetize(embedding_dim=4, num_embeddings=8, layout='per_tensor', targets=['fc'])"


def test_every_error_subclasses_hypernn_error_and_a_builtin():
    builtins = (ValueError, TypeError, ImportError, RuntimeError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.HypernnError)
        if cls is not errors.HypernnError:
            assert issubclass(cls, builtins), name


def test_import_hypernn_imports_no_framework():
    code = (
        "import sys, hypernn, hypernn.selection, hypernn.layout, hypernn.transform;"
        "hypernn.hypernetize(embedding_dim=2, num_embeddings=2);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'jaxlib', 'flax', 'chex')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_framework_gives_an_install_hint(monkeypatch):
    from hypernn.errors import MissingDependencyError
    from hypernn.transform import backends

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ModuleNotFoundError
    for name in [m for m in sys.modules if m.startswith("hypernn.transform.torch")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependencyError, match=r"pip install 'hypernn\[torch\]'"):
        backends.load_backend("torch")
    with pytest.raises(MissingDependencyError, match=r"needs 'torch', which is not installed"):
        hypernn.HypernetizedModule  # noqa: B018  (lazy attribute access triggers the import)


def test_unknown_attribute_of_the_package():
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        hypernn.nothing  # noqa: B018
