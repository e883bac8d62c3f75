"""The hyper-nn 0.2 import paths and names, and framework isolation: ``hypernn.torch``
imports no jax, ``hypernn.jax`` no torch (checked in fresh interpreters)."""

import importlib
import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "chex", "optax")

NAMES = {
    "torch": ["TorchHyperNetwork", "TorchLinearHyperNetwork", "TorchDynamicHyperNetwork", "TorchDynamicEmbeddingModule"],
    "jax": ["JaxHyperNetwork", "JaxLinearHyperNetwork", "JaxDynamicHyperNetwork", "JaxDynamicEmbeddingModule"],
}


def frameworks_after(statement: str) -> list:
    code = f"import sys; {statement}; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))"
    return eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)  # noqa: S307


@pytest.mark.parametrize(
    "statement, allowed",
    [
        ("import hypernn.base", []),
        ("import hypernn.torch, hypernn.torch.utils", ["torch"]),
        ("import hypernn.jax, hypernn.jax.utils", ["flax", "jax", "jaxlib"]),
    ],
)
def test_each_api_imports_only_its_framework(statement, allowed):
    assert set(frameworks_after(statement)) <= set(allowed)
    assert set(allowed) - {"jaxlib"} <= set(frameworks_after(statement))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_hyper_nn_names_and_modules(framework):
    from hypernn.base import HyperNetwork

    package = importlib.import_module(f"hypernn.{framework}")
    for module in ("hypernet", "linear_hypernet", "dynamic_hypernet", "utils"):
        importlib.import_module(f"hypernn.{framework}.{module}")
    for name in NAMES[framework]:
        assert name in package.__all__
    for name in NAMES[framework][:3]:
        assert issubclass(getattr(package, name), HyperNetwork)
    prefix = "Torch" if framework == "torch" else "Jax"
    assert getattr(package, f"{prefix}DynamicHyperNetwork").__module__ == f"hypernn.{framework}.dynamic_hypernet"


def test_readme_import_paths():
    from hypernn.jax.dynamic_hypernet import JaxDynamicHyperNetwork, JaxHyperNetwork
    from hypernn.jax.hypernet import JaxHyperNetwork as same
    from hypernn.torch.dynamic_hypernet import TorchDynamicHyperNetwork
    from hypernn.torch.hypernet import TorchHyperNetwork

    assert JaxHyperNetwork is same and issubclass(JaxDynamicHyperNetwork, JaxHyperNetwork)
    assert issubclass(TorchDynamicHyperNetwork, TorchHyperNetwork)


def test_the_base_class_is_abstract():
    from hypernn.base import HyperNetwork

    with pytest.raises(TypeError, match="abstract"):
        HyperNetwork()
