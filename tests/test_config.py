"""Config and the built-in models' own settings: every field's bounds, choices and type enforced
when it is built; how settings are replaced and recorded; how many examples ``subsample`` keeps."""

import math

import pytest

from jaxseed import config as settings
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.models import cnn, vae

# Every setting -> (its field, its type, a model whose Config has it): Config's, then each built-in model's own.
OWNERS = (("cnn", Config), ("cnn", cnn.OBJECTIVE.settings), ("vae", vae.OBJECTIVE.settings))
FIELDS = {name: (field, kind, model)
          for model, owner in OWNERS for name, (field, kind, _) in settings.fields(owner).items()}
RULES = ("minimum", "maximum", "above", "below")


def build(name, value):
    """The Config of the model that owns setting ``name``, with ``name`` set to ``value``."""
    return Config(model=FIELDS[name][2]).replace(**{name: value})


def value_of(config, name):
    return config.to_dict()[name]


def refused(name, value):
    with pytest.raises(UserError, match=f"^{name} must be"):
        build(name, value)


def step(name, value, direction):
    """The nearest value of the field's type beyond ``value`` in ``direction`` (+1 or -1)."""
    if FIELDS[name][1] is int:
        return int(value) + direction
    return math.nextafter(float(value), direction * math.inf)


@pytest.mark.parametrize("name", [name for name, (field, _, _) in FIELDS.items()
                                  if any(field.metadata[r] is not None for r in RULES)])
def test_every_bound_in_the_metadata_is_enforced_at_its_edge(name):
    """Read from the field's own metadata (what --help and the CLI say): the bound itself accepted
    where inclusive, refused where strict, and the nearest value beyond it refused."""
    rules = FIELDS[name][0].metadata
    for rule, direction, inclusive in (("minimum", -1, True), ("maximum", 1, True), ("above", -1, False),
                                       ("below", 1, False)):
        bound = rules[rule]
        if bound is None:
            continue
        value = int(bound) if FIELDS[name][1] is int else float(bound)
        if inclusive:
            assert value_of(build(name, value), name) == value
            refused(name, step(name, value, direction))
        else:
            refused(name, value)
            build(name, step(name, value, -direction))


# Each bounded field's bounds, written out: a bound dropped from the metadata (which the test above
# reads) fails here. Field: (values refused, values accepted at the edges).
BOUNDS = {
    "dropout_rate": ([-0.01, 1.0], [0.0, 0.99]),
    "latents": ([0, 4097], [1, 4096]),
    "train_limit": ([0], [1]),
    "subsample": ([0.0, 1.01], [1e-9, 1.0]),
    "crop_padding": ([-1, 1025], [0, 1024]),
    "max_translation": ([-0.5, 1000.5], [0.0, 1000.0]),
    "max_rotation": ([-1.0, 180.5], [0.0, 180.0]),
    "epochs": ([0, 100_001], [1, 100_000]),
    "batch_size": ([0, 2**20 + 1], [1, 2**20]),
    "learning_rate": ([0.0, -1e-3], [1e-9]),
    "warmup_epochs": ([-0.5], [0.0]),
    "weight_decay": ([-1e-6], [0.0]),
    "steps_per_call": ([-1, 100_001], [0, 100_000]),
    "eval_batch_size": ([0, 2**20 + 1], [1, 2**20]),
    "devices": ([-1], [0]),
    "cpu_threads": ([-1, 4097], [0, 4096]),
    "checkpoint_every": ([-1], [0]),
    "keep_checkpoints": ([0, 1001], [1, 1000]),
    "importance_samples": ([0, 100_001], [1, 100_000]),
}


@pytest.mark.parametrize("name", BOUNDS)
def test_each_fields_bounds_by_value(name):
    refuse, accept = BOUNDS[name]
    for value in refuse:
        refused(name, value)
    for value in accept:
        assert value_of(build(name, value), name) == value


def test_every_bounded_field_is_written_out_above():
    """A new bounded field gets its row in BOUNDS; a field that lost all its bounds leaves the metadata's list."""
    assert {name for name, (field, _, _) in FIELDS.items()
            if any(field.metadata[r] is not None for r in RULES)} == set(BOUNDS)


@pytest.mark.parametrize("name", [name for name, (field, _, _) in FIELDS.items() if field.metadata["choices"]])
def test_choices_are_enforced(name):
    for choice in FIELDS[name][0].metadata["choices"]:
        assert value_of(build(name, choice), name) == choice
    refused(name, "no such choice")


def test_types_are_checked_as_a_manifest_needs():
    """A manifest is input: "10" is not 10, True is not 1, and no number is inf or nan."""
    refused("epochs", "10")
    refused("epochs", True)
    refused("epochs", 2.0)
    refused("trace", 1)
    refused("learning_rate", math.inf)
    refused("max_rotation", math.nan)
    refused("model", None)
    refused("latents", 4.0)
    assert Config(learning_rate=1).learning_rate == 1  # an int is a number
    assert Config(train_limit=None, subsample=None, data_dir=None).train_limit is None


@pytest.mark.parametrize("subsample, num_train, kept", [
    (0.5, 5, 3), (0.5, 9, 5), (0.125, 20, 3), (0.25, 10, 3),  # halves (exact in binary) go up, not to even
    (0.5, 7, 4), (0.24, 10, 2), (0.26, 10, 3),  # otherwise the nearest integer
    (0.01, 10, 1), (0.25, 2, 1), (1.0, 7, 7),  # at least one example, at most all
])
def test_num_kept_is_the_nearest_integer_halves_up(subsample, num_train, kept):
    assert Config(subsample=subsample).num_kept(num_train) == kept


def test_no_subsample_keeps_none():
    assert Config().num_kept(60_000) is None


@pytest.mark.parametrize("change, message", [
    ({"learning_rate": 0.0}, "learning_rate must be > 0.0"),
    ({"dropout_rate": 1.0}, "dropout_rate must be < 1.0"),
    ({"dropout_rate": -0.1}, "dropout_rate must be >= 0.0"),
    ({"max_rotation": 181.0}, "max_rotation must be <= 180.0"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"batch_size": 64.0}, "batch_size must be an integer"),
])
def test_config_bounds(change, message):
    with pytest.raises(UserError, match=message):
        Config().replace(**change)


def test_settings_belong_to_their_model_and_are_recorded_flat():
    """The CNN owns dropout_rate, the VAE latents: each is set by name on its model's Config only,
    a changed model starts from its own defaults, and to_dict records the Config's fields then the model's."""
    config = Config().replace(dropout_rate=0.25)
    assert config.settings == cnn.CNNSettings(dropout_rate=0.25)
    assert Config(model="cnn", settings=cnn.CNNSettings(0.25)) == config and hash(config) == hash(Config().replace(
        dropout_rate=0.25))
    with pytest.raises(UserError, match="^latents is not a setting of jaxseed's Config or of the model cnn \\(its own: "
                                        "dropout_rate\\)$"):
        config.replace(latents=4)
    changed = config.replace(model="vae", latents=4)
    assert changed.settings == vae.VAESettings(latents=4)
    record = changed.to_dict()
    assert list(record)[:2] == ["model", "data"] and list(record)[-3:] == ["latents", "binarize", "importance_samples"]
    assert "dropout_rate" not in record and "settings" not in record
    with pytest.raises(UserError, match="^settings must be a jaxseed.config.Settings, got dict$"):
        Config(settings={"dropout_rate": 0.5})


def test_messages_name_the_field_what_it_may_be_and_every_choice():
    from jaxseed.config import DATASETS, npz_path

    with pytest.raises(UserError, match=r"^data_dir must be a string or null, got 3$"):
        Config(data_dir=3)
    with pytest.raises(UserError, match=r"^epochs must be an integer, got '2'$"):
        Config(epochs="2")
    with pytest.raises(UserError, match=r"^augment must be one of affine, crop_flip, none; got 'flip'$"):
        Config(augment="flip")
    assert npz_path("npz:data/x.npz") == "data/x.npz" and npz_path("mnist") is None and npz_path(3) is None
    assert "npz:x.npz" in DATASETS and "mnist" in DATASETS and "x.npz" not in DATASETS
    assert Config(data="npz:x.npz").data == "npz:x.npz"


def test_replace_keeps_the_models_settings_unless_the_model_changes():
    tuned = Config().replace(dropout_rate=0.25)
    assert tuned.replace(batch_size=64).settings.dropout_rate == 0.25
    assert tuned.replace(model="cnn").settings.dropout_rate == 0.25
    given = Config().replace(model="vae", settings=vae.VAESettings(latents=4))  # a new model with settings given
    assert given.settings == vae.VAESettings(latents=4)
    with pytest.raises(UserError, match="^dropout_rate is not a setting of jaxseed's Config or of the model vae \\(its "
                                        "own: latents, binarize, importance_samples\\)$"):
        given.replace(dropout_rate=0.1)


def test_a_model_without_settings_says_so(tmp_path):
    from test_objective import objective_file

    model = objective_file(tmp_path) + ":OBJECTIVE"
    with pytest.raises(UserError, match="^dropout_rate is not a setting of jaxseed's Config or of the model .*mine.py:"
                                        "OBJECTIVE \\(its own: none\\)$"):
        Config(model=model).replace(dropout_rate=0.1)


def test_a_setting_of_another_type_is_refused_in_words():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Odd(settings.Settings):
        sizes: list = settings.setting(None, "a list")

    with pytest.raises(UserError, match="^setting sizes must be an int, float, str or bool \\(or Optional of one\\), "
                                        "not <class 'list'>$"):
        Odd()
