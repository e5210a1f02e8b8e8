"""Property tests of the params validator: random mutations of the valid tiny study either pass
or raise ConfigError with one line that starts with the key path (``studies.tiny...``); never
another exception, never a multi-line message. For learning rates, batch sizes, class lists and
checkpoint steps the verdict must also be the right one."""

import copy
import math

import yaml
from conftest import TINY_PARAMS
from hypothesis import given, settings
from hypothesis import strategies as st

from flatrep.data import datasets
from flatrep.params import studies, validation

TINY = yaml.safe_load(TINY_PARAMS.read_text())
FAST = settings(max_examples=150, deadline=None)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)
numbers = st.integers(-5, 10**6) | st.floats() | st.booleans()


def locations(tree, parts: tuple = ()):
    """The key paths of ``tree`` itself and of every value under it."""
    yield parts
    children = (tree.items() if isinstance(tree, dict)
                else enumerate(tree) if isinstance(tree, list) else ())
    for key, child in children:
        yield from locations(child, (*parts, key))


def at(tree, parts: tuple):
    """The value of ``tree`` at the key path ``parts``."""
    for part in parts:
        tree = tree[part]
    return tree


def verdict(study: dict) -> str | None:
    """None if the params with ``study`` as ``studies.tiny`` pass, else the error message, which
    must be one line naming a key path under the study."""
    params = {"run_studies": ["tiny"], "studies": {"tiny": study}}
    try:
        validation.check_params(params)
    except studies.ConfigError as err:
        message = str(err)
        assert "\n" not in message and message.startswith("studies.tiny"), message
        return message
    return None


def mutated(key_path: tuple, value) -> dict:
    """A copy of the tiny study with ``value`` at ``key_path`` (a new key if absent)."""
    study = copy.deepcopy(TINY["studies"]["tiny"])
    if not key_path:
        return value
    at(study, key_path[:-1])[key_path[-1]] = value
    return study


@FAST
@given(st.data(), st.text(max_size=12), values)
def test_a_random_key_in_any_mapping_passes_or_is_named(data, key, value):
    study = TINY["studies"]["tiny"]
    mappings = [parts for parts in locations(study) if isinstance(at(study, parts), dict)]
    where = data.draw(st.sampled_from(mappings))
    message = verdict(mutated((*where, key), value))
    if key not in at(study, where) and message is not None:
        assert message.startswith(studies.key_path(("studies", "tiny", *where)))


@FAST
@given(st.data(), values)
def test_a_random_value_anywhere_passes_or_is_named(data, value):
    where = data.draw(st.sampled_from(list(locations(TINY["studies"]["tiny"]))))
    verdict(mutated(where, value))


def is_positive_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and x > 0)


def is_count(x, least: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


@FAST
@given(st.lists(numbers, min_size=1, max_size=4), st.lists(numbers, min_size=1, max_size=4))
def test_learning_rates_and_batch_sizes_get_the_right_verdict(rates, batch_sizes):
    """Positive rates and batch sizes of at most the training rows pass; a batch size above
    them is named with its run; anything else with its grid entry."""
    study = mutated(("train", "grid"), [{"lr": rates, "batch_size": batch_sizes}])
    message = verdict(study)
    train_rows = datasets.split_sizes(study["data"])["train"]
    if all(map(is_positive_number, rates)) and all(is_count(b, 1) for b in batch_sizes):
        if max(batch_sizes) <= train_rows:
            assert message is None
        else:
            assert message.startswith("studies.tiny: run ") and "'s batch_size = " in message
    else:
        assert message.startswith("studies.tiny.train.grid[0].")


@FAST
@given(st.lists(numbers, max_size=4))
def test_class_lists_get_the_right_verdict(classes):
    message = verdict(mutated(("data", "classes"), classes))
    valid = (all(is_count(c, 0) and c < 10 for c in classes) and len(classes) >= 2
             and len(set(classes)) == len(classes))
    assert (message is None) == valid, message
    if not valid:
        assert message.startswith("studies.tiny.data.classes")


@FAST
@given(st.lists(numbers, max_size=4), st.integers(-2, 1000))
def test_checkpoint_steps_get_the_right_verdict(steps, iterations):
    study = mutated(("train", "checkpoints"), steps)
    study["train"]["iterations"] = iterations
    message = verdict(study)
    valid = (iterations >= 1 and len(steps) >= 1
             and all(is_count(step, 0) and step <= iterations for step in steps))
    assert (message is None) == valid, message
    if not valid:
        assert message.startswith("studies.tiny.train.")
