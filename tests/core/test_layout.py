"""The chunk layout, table-driven, against hand-computed offsets (no framework)."""

import math

import numpy as np
import pytest

from hypernn.errors import ConfigurationError, GeneratedParamsError
from hypernn.layout import plan_layout

SHAPES = [("a", (2, 3)), ("b", (3,)), ("c", (4, 1))]  # 6 + 3 + 4 = 13 values


@pytest.mark.parametrize(
    "num_embeddings, chunk_dim, expected_chunk, expected_chunks",
    [
        (1, None, 13, 1),  # a single chunk holds everything
        (2, None, 7, 2),  # ceil(13 / 2)
        (4, None, 4, 4),  # total not divisible by the chunk count: 16 generated, 3 unused
        (13, None, 1, 13),  # one value per chunk
        (20, None, 1, 20),  # more chunks than values (hyper-nn's (7, 10) -> 1)
        (None, 5, 5, 3),  # chunk_dim given: ceil(13 / 5) chunks
        (None, 50, 50, 1),  # chunk larger than the total
        (3, 6, 6, 3),  # both given and enough
    ],
)
def test_global_layout_sizes(num_embeddings, chunk_dim, expected_chunk, expected_chunks):
    layout = plan_layout(SHAPES, kind="global", num_embeddings=num_embeddings, chunk_dim=chunk_dim)
    assert (layout.chunk_dim, layout.num_chunks) == (expected_chunk, expected_chunks)
    assert layout.num_params == 13
    assert layout.generated_size == expected_chunk * expected_chunks
    assert layout.unused == expected_chunk * expected_chunks - 13
    assert [s.offset for s in layout.slots] == [0, 6, 9]


@pytest.mark.parametrize(
    "hyper_nn_case",
    [(10, 4, 3), (10, 3, 4), (7, 10, 1), (4192, 5, 839), (4192, 32, 131)],
)
def test_global_chunk_dim_is_hyper_nn_ceiling(hyper_nn_case):
    total, num_embeddings, expected = hyper_nn_case
    layout = plan_layout([("w", (total,))], kind="global", num_embeddings=num_embeddings)
    assert layout.chunk_dim == expected == math.ceil(total / num_embeddings)


def test_per_tensor_layout_starts_every_tensor_on_a_chunk_boundary():
    layout = plan_layout(SHAPES, kind="per_tensor", chunk_dim=4)
    # a: 6 values -> chunks 0,1 ; b: 3 -> chunk 2 ; c: 4 -> chunk 3
    assert [s.offset for s in layout.slots] == [0, 8, 12]
    assert layout.num_chunks == 4 and layout.generated_size == 16 and layout.unused == 3
    assert layout.full_plan.sizes == (6, 2, 3, 1, 4)
    assert layout.full_plan.keep == (0, 2, 4)


def test_per_tensor_layout_from_num_embeddings_picks_smallest_chunk_that_fits():
    layout = plan_layout(SHAPES, kind="per_tensor", num_embeddings=4)
    # chunk 4 needs 2+1+1 = 4 chunks; chunk 3 would need 2+1+2 = 5
    assert (layout.chunk_dim, layout.num_chunks) == (4, 4)
    layout = plan_layout(SHAPES, kind="per_tensor", num_embeddings=100)
    assert layout.chunk_dim == 1 and layout.num_chunks == 13


def test_zero_size_tensors_get_empty_slots():
    shapes = [("a", (2, 2)), ("empty", (0, 3)), ("b", (1,))]
    for kind in ("global", "per_tensor"):
        layout = plan_layout(shapes, kind=kind, num_embeddings=2)
        assert [s.size for s in layout.slots] == [4, 0, 1]
        vector = np.arange(layout.generated_size)
        pieces = np.split(vector, np.cumsum(layout.full_plan.sizes)[:-1])
        kept = [pieces[i] for i in layout.full_plan.keep]
        assert [len(p) for p in kept] == [4, 0, 1]


@pytest.mark.parametrize(
    "kind, num_embeddings",
    [("global", 1), ("global", 3), ("global", 5), ("global", 8), ("per_tensor", 3), ("per_tensor", 5), ("per_tensor", 8)],
)
def test_split_plans_recover_each_tensor(kind, num_embeddings):
    layout = plan_layout(SHAPES, kind=kind, num_embeddings=num_embeddings)
    # Fill the generated vector with the index of each value; slot i must read exactly
    # [offset, offset + size) of it, for the full plan; the compact plan reads end to end.
    vector = np.arange(layout.generated_size)
    for plan, starts in ((layout.full_plan, [s.offset for s in layout.slots]), (layout.compact_plan, [0, 6, 9])):
        length = sum(plan.sizes)
        pieces = np.split(vector[:length], np.cumsum(plan.sizes)[:-1])
        for slot, index, start in zip(layout.slots, plan.keep, starts):
            np.testing.assert_array_equal(pieces[index], np.arange(start, start + slot.size))
    assert layout.plan_for(layout.generated_size) is layout.full_plan
    assert layout.plan_for(13) == layout.compact_plan


def test_plan_for_rejects_other_lengths_naming_valid_sizes():
    layout = plan_layout(SHAPES, kind="global", num_embeddings=4)
    with pytest.raises(GeneratedParamsError, match=r"has 12 values; expected 16 \(the generator's output, 4 x 4\) or 13"):
        layout.plan_for(12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="global", num_embeddings=2, chunk_dim=3), r"hold 6 values, fewer than the 13 selected"),
        (dict(kind="per_tensor", num_embeddings=2), r"at least one chunk per tensor: 3 non-empty tensors .* `num_embeddings`=2"),
        (dict(kind="per_tensor", num_embeddings=3, chunk_dim=2), r"needs 7 chunks, but `num_embeddings`=3"),
        (dict(kind="diagonal", num_embeddings=2), r"`layout` must be one of \('global', 'per_tensor'\); got 'diagonal'"),
        (dict(kind="global"), r"pass `num_embeddings` or `chunk_dim`"),
    ],
)
def test_layout_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        plan_layout(SHAPES, **kwargs)


def test_nothing_to_generate_is_an_error():
    with pytest.raises(ConfigurationError, match=r"hold no values; there is nothing to generate"):
        plan_layout([("empty", (0,))], kind="global", num_embeddings=1)


def test_tied_aliases_are_kept_and_described():
    from hypernn.specs import ParamSpec

    spec = ParamSpec("emb.weight", (3, 2), "float32", ((), ()), aliases=("head.weight",))
    layout = plan_layout([spec], kind="global", num_embeddings=2)
    assert layout.slots[0].aliases == ("head.weight",)
    assert layout.num_params == 6  # generated once
    text = layout.describe()
    assert "emb.weight (= head.weight): shape (3, 2), values [0, 6), chunks 0-1" in text
    assert text.startswith("global layout: 2 chunks x 3 = 6 generated values for 6 target values (0 unused)")
