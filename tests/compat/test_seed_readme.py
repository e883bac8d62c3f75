"""Every ```python block of hyper-nn 0.2's README (``hyper_nn_README.md``, a copy kept as
test data) runs unchanged on hypernn, and does what its text says.

Two blocks are excerpts of hyper-nn 0.2.1's class source (method definitions between
``...`` elision lines); they run as the body of a subclass of hypernn's class. The vmap
block forgot ``import torch``; that line, and only that, is added.
"""

import pathlib
import re
import textwrap
from typing import Any, Dict, List, Optional, Tuple

import pytest

README = pathlib.Path(__file__).with_name("hyper_nn_README.md")


def blocks() -> List[str]:
    found = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(found) == 6
    return found


def run(index: int, prefix: str = "") -> Dict[str, Any]:
    namespace: Dict[str, Any] = {"__name__": f"hyper_nn_readme_block_{index}"}
    exec(compile(prefix + blocks()[index], f"{README.name} block {index}", "exec"), namespace)  # noqa: S102
    return namespace


def excerpt_class(index: int, base: type, namespace: Dict[str, Any]) -> type:
    """The excerpt's methods as the body of ``class Excerpt(base)``; ``namespace`` holds
    the names its source file imported."""
    lines = [line for line in blocks()[index].splitlines() if line.strip() != "..."]
    source = f"class Excerpt({base.__name__}):\n" + textwrap.indent(textwrap.dedent("\n".join(lines)), "    ")
    namespace = {**namespace, base.__name__: base, "Any": Any, "Dict": Dict, "List": List, "Optional": Optional,
                 "Tuple": Tuple, "__name__": "hyper_nn_readme_excerpt"}  # fmt: skip
    exec(compile(source, f"{README.name} block {index}", "exec"), namespace)  # noqa: S102
    return namespace["Excerpt"]


# ------------------------------------------------------------------ torch


def test_torch_hypernetwork_excerpt_runs_as_a_subclass():
    import torch
    from torch import nn

    from hypernn.torch.hypernet import TorchHyperNetwork

    excerpt = excerpt_class(0, TorchHyperNetwork, {"torch": torch, "nn": nn})
    target = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    torch.manual_seed(0)
    theirs = excerpt.from_target(target, embedding_dim=4, num_embeddings=32)
    torch.manual_seed(0)
    ours = TorchHyperNetwork.from_target(target, embedding_dim=4, num_embeddings=32)
    x = torch.randn(3, 32)
    output, flat, aux = theirs(x, has_aux=True)  # the excerpt's forward, generate_params and target_forward
    torch.testing.assert_close(output, ours(x))
    assert flat.shape == (4192,) and aux["embedding"].shape == (32, 4)
    with pytest.raises(ValueError, match=r"has 10 values; the target network needs at least 4192"):
        theirs(x, generated_params=torch.zeros(10))


def test_pytorch_quick_usage():
    import torch

    torch.manual_seed(0)
    ns = run(2)
    hypernetwork, inp = ns["hypernetwork"], ns["inp"]
    assert (hypernetwork.num_target_parameters, hypernetwork.weight_chunk_dim) == (4192, 131)
    assert sum(p.numel() for p in hypernetwork.parameters()) == 783  # the README's quick start count
    output, generated_params, aux_output = hypernetwork(inp, has_aux=True)
    assert output.shape == (1, 32) and generated_params.shape == (32 * 131,) and aux_output["embedding"].shape == (32, 4)
    torch.testing.assert_close(hypernetwork(inp, generated_params=ns["generated_params"]), output)
    dynamic, dynamic_output = ns["dynamic_hypernetwork"], ns["output"]
    assert dynamic_output.shape == (1, 32)
    torch.testing.assert_close(dynamic_output, dynamic(inp))  # a zero state is the default
    _, flat, aux = dynamic(inp, has_aux=True)
    assert flat.shape == (4192,) and aux["hidden_state"].shape == (1, 32)


def test_multi_task_hypernetwork():
    import torch

    torch.manual_seed(0)
    ns = run(4)
    hypernetwork, inp, task = ns["hypernetwork"], ns["inp"], ns["one_hot_task_embedding"]
    assert ns["out"].shape == (1, 32)
    assert hypernetwork.weight_generator[0].in_features == 4 + 4  # embedding_dim + num_tasks
    flat, aux = hypernetwork.generate_params(inp, task)
    torch.testing.assert_close(ns["out"], hypernetwork(inp, generated_params=flat))
    other = hypernetwork(inp, generate_params_kwargs=dict(one_hot_task_embedding=torch.tensor([[1.0, 0.0, 0.0, 0.0]])))
    assert not torch.allclose(other, ns["out"])  # the task changes the generated weights


def test_vmap_block_with_its_missing_import():
    import torch

    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match=r"`functorch.vmap` is deprecated"):  # torch's warning for the README's import
        ns = run(5, prefix="import torch\n")
    hypernetwork, inp = ns["hypernetwork"], ns["inp"]
    loop = torch.stack([hypernetwork(inp[i]) for i in range(10)])
    torch.testing.assert_close(ns["outputs"], loop)  # vmap equal to the loop
    torch.testing.assert_close(hypernetwork(inp[:, 0]), loop[:, 0])  # and to one batched call now


# ------------------------------------------------------------------ jax


def test_flax_hypernetwork_excerpt_runs_as_a_subclass():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hypernn.jax.hypernet import JaxHyperNetwork, create_param_tree

    excerpt = excerpt_class(1, JaxHyperNetwork, {"jax": jax, "jnp": jnp, "nn": nn, "create_param_tree": create_param_tree})
    target = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(32)])
    x = jnp.ones((3, 32))
    theirs = excerpt.from_target(target, embedding_dim=4, num_embeddings=32, inputs=x)
    ours = JaxHyperNetwork.from_target(target, embedding_dim=4, num_embeddings=32, inputs=x)
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(ours.init(jax.random.key(0), x))
    output, flat, aux = theirs.apply(variables, x, has_aux=True)  # the excerpt's forward, generate_params, target_forward
    np.testing.assert_allclose(output, ours.apply(variables, x), rtol=1e-6)
    assert flat.shape == (4192,) and aux["embedding"].shape == (32, 4)


def test_jax_quick_usage():
    import jax
    import jax.numpy as jnp
    import numpy as np

    ns = run(3)
    hypernetwork, params, inp = ns["hypernetwork"], ns["hypernetwork_params"], ns["inp"]
    assert (hypernetwork.num_target_parameters, hypernetwork.weight_chunk_dim) == (4192, 131)
    assert jax.tree_util.tree_map(jnp.shape, params) == {"params": {
        "embedding_module": {"embedding": (32, 4)}, "weight_generator": {"kernel": (4, 131), "bias": (131,)}}}  # fmt: skip
    output, generated_params, aux_output = hypernetwork.apply(params, inp, has_aux=True)
    assert output.shape == (1, 32) and generated_params.shape == (4192,) and aux_output["embedding"].shape == (32, 4)
    np.testing.assert_allclose(hypernetwork.apply(params, inp, generated_params=ns["generated_params"]), output, rtol=1e-6)
    dynamic, dynamic_params = ns["dynamic_hypernetwork"], ns["dynamic_hypernetwork_params"]
    np.testing.assert_allclose(ns["output"], dynamic.apply(dynamic_params, inp), rtol=1e-6)
    _, flat, aux = dynamic.apply(dynamic_params, inp, has_aux=True)
    assert flat.shape == (4192,) and aux["hidden_state"].shape == (1, 32)
    batch = jnp.ones((4, 32))
    assert dynamic.apply(dynamic_params, batch).shape == (4, 32)  # hyper-nn: one sample per call
