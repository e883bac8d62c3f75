"""The targets/exclude grammar on framework-free specs (module classes are plain types)."""

import re

import pytest

from hypernn.errors import OptionTypeError, SelectionError
from hypernn.selection import select
from hypernn.specs import ParamSpec


class Root: ...


class Encoder: ...


class Attention: ...


class Dense: ...


class Norm: ...


def spec(name, types, shape=(2, 2), kind="parameter", dtype="float32", aliases=(), alias_types=()):
    def chain(dotted, module_types):
        parts = dotted.split(".")[:-1]
        names = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
        return tuple(zip(names, (Root,) + tuple(module_types)))

    chains = (chain(name, types),) + tuple(chain(a, t) for a, t in zip(aliases, alias_types))
    return ParamSpec(name, shape, dtype, chains, aliases=aliases, is_floating=dtype.startswith("float"), kind=kind)


SPECS = [
    spec("encoder.layer.0.attention.self.query.weight", (Encoder, object, object, Attention, object, Dense)),
    spec("encoder.layer.0.attention.self.query.bias", (Encoder, object, object, Attention, object, Dense)),
    spec("encoder.layer.0.attention.self.key.weight", (Encoder, object, object, Attention, object, Dense)),
    spec("encoder.layer.0.norm.weight", (Encoder, object, object, Norm)),
    spec("head.weight", (Dense,)),
    spec("head.bias", (Dense,)),
    spec("step.count", (object,), dtype="int64"),
    spec("encoder.layer.0.norm.running_mean", (Encoder, object, object, Norm), kind="buffer"),
]


def names(selection):
    return list(selection.names)


@pytest.mark.parametrize(
    "targets, expected",
    [
        (None, [s.name for s in SPECS[:6]]),  # every floating-point parameter; int and buffer skipped
        ("head", ["head.weight", "head.bias"]),  # regex full match on a module name
        (r".*\.weight", [SPECS[0].name, SPECS[2].name, SPECS[3].name, "head.weight"]),
        (r"encoder\.layer\.\d+\.attention", [s.name for s in SPECS[:3]]),  # an ancestor module
        ("query", []),  # a regex must match a whole name: "query" alone is no full name
        (["query"], [SPECS[0].name, SPECS[1].name]),  # list: dotted suffix of a module
        (["self.query.bias", "head.weight"], [SPECS[1].name, "head.weight"]),
        (Attention, [s.name for s in SPECS[:3]]),  # class of an ancestor
        ((Norm, Attention), [s.name for s in SPECS[:4]]),
        (lambda name, value: name.endswith("bias"), [SPECS[1].name, "head.bias"]),
        ([re.compile(r"head\..*"), Norm], [SPECS[3].name, "head.weight", "head.bias"]),  # a mixed list
        ("step", []),  # only an integer parameter: nothing floating to generate
    ],
)
def test_targets_grammar(targets, expected):
    if not expected:
        with pytest.raises(SelectionError, match="selects no parameters|not floating-point"):
            select(SPECS, targets=targets)
        return
    assert names(select(SPECS, targets=targets)) == expected


@pytest.mark.parametrize(
    "exclude, expected",
    [
        (["bias"], [SPECS[0].name, SPECS[2].name, SPECS[3].name, "head.weight"]),
        (Dense, [SPECS[3].name]),
        (r"encoder.*", ["head.weight", "head.bias"]),
        (lambda name, value: "norm" in name, [SPECS[0].name, SPECS[1].name, SPECS[2].name, "head.weight", "head.bias"]),
    ],
)
def test_exclude_takes_the_same_grammar(exclude, expected):
    assert names(select(SPECS, exclude=exclude)) == expected


def test_excluding_an_unselected_but_existing_name_is_fine():
    assert names(select(SPECS, targets=["head"], exclude=["norm"])) == ["head.weight", "head.bias"]


def test_unknown_list_entry_lists_available_names():
    with pytest.raises(SelectionError, match=r"`targets` entries 'fc3' match nothing in MLP\. Available parameters: .*'head\.bias'.*Available modules: .*'encoder\.layer\.0\.norm'"):
        select(SPECS, targets=["head", "fc3"], model_name="MLP")
    with pytest.raises(SelectionError, match=r"`exclude` entries 'nrom' match nothing"):
        select(SPECS, exclude=["nrom"])


def test_a_buffer_named_explicitly_is_an_error():
    with pytest.raises(SelectionError, match=r"names 'norm\.running_mean', which are buffers of model, not parameters"):
        select(SPECS, targets=["norm.running_mean"])


def test_an_integer_parameter_matched_by_targets_is_an_error():
    with pytest.raises(SelectionError, match=r"selects 'step\.count \(int64\)' of model, which are not floating-point"):
        select(SPECS, targets=["head", "count"])
    with pytest.raises(SelectionError, match=r"not floating-point"):
        select(SPECS, targets=r"(head|step)")
    # excluding it fixes the selection
    assert names(select(SPECS, targets=r"(head|step)", exclude=["count"])) == ["head.weight", "head.bias"]


def test_nothing_selected_lists_what_exists():
    with pytest.raises(SelectionError, match=r"`targets`='nothing.*' with `exclude`=None selects no parameters of model\. Available parameters"):
        select(SPECS, targets="nothing.*")
    with pytest.raises(SelectionError, match=r"Net has no floating-point parameters to generate"):
        select([spec("steps", (), dtype="int64")], model_name="Net")
    with pytest.raises(SelectionError, match=r"has no floating-point parameters"):
        select([], model_name="Net")


def test_tied_tensor_selected_through_any_of_its_names():
    tied = spec("embed.weight", (object,), aliases=("head.weight",), alias_types=((Dense,),))
    other = spec("head.bias", (Dense,))
    assert names(select([tied, other], targets=["head.weight"])) == ["embed.weight"]
    assert names(select([tied, other], targets=Dense)) == ["embed.weight", "head.bias"]


def test_invalid_regex_and_wrong_types_are_rejected():
    with pytest.raises(SelectionError, match=r"`targets`='\(unclosed' is not a valid regular expression"):
        select(SPECS, targets="(unclosed")
    with pytest.raises(OptionTypeError, match=r"`targets` must be None, a regex string, .* got 3 of type int"):
        select(SPECS, targets=3)
    with pytest.raises(OptionTypeError, match=r"`exclude` entries must be names .* got 1.5 of type float"):
        select(SPECS, exclude=["head", 1.5])


def test_dry_run_table():
    text = str(select(SPECS, targets=["head"], model_name="Net"))
    assert text.splitlines() == [
        "2 tensors selected from Net, 8 values",
        "name         shape   size",
        "head.weight  (2, 2)  4",
        "head.bias    (2, 2)  4",
    ]
