"""What a model is trained and scored on, and which random draws it makes: an ``Objective``.

An objective is the one place a model's randomness is declared: which per-example
streams its loss draws from (built-in ``dropout``, ``augment``, ``latent``, or
streams of its own), which of them a config really draws (dropout at rate 0 draws
nothing), and whether it yields class probabilities. Every run also draws ``init``
(the ``build`` key) and ``shuffle`` (the loop's order). The one training loop
(``loop.py``) runs any objective the same way; fingerprints, ablation and reports
ask the objective, never a model's name.

Built-in objectives live one per file in ``jaxseed/models/`` (``cnn``, ``vae``);
``resolve`` finds them by name, and a user's by ``package.module:NAME`` or
``path/to/file.py:NAME``. Metrics are returned as sums over a batch plus ``count``;
the loop divides. Evaluation draws come from ``streams.evaluation_key()`` at fixed
positions, so every run, whatever its seeds, is scored on the same test draws.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import pkgutil
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseed import data, streams, userimport
from jaxseed.config import Config, NoSettings, Settings
from jaxseed.config import fields as setting_fields
from jaxseed.errors import UserError, one_line

# Positions under the evaluation key; fixed forever, like the stream ids.
EVAL_BINARIZE, EVAL_LATENT, EVAL_IMPORTANCE, EVAL_SAMPLES = range(4)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch: the data set's named arrays, each with a leading example axis B, and each
    example's index int32[B] in its split.

    ``batch.x`` the inputs (images uint8[B, H, W, C], features, tokens, ...), ``batch.y`` the
    targets where the data has them (class labels int32[B]), any other array by its name
    (``batch.mask``); ``batch.arrays`` all of them (``data.Dataset``).
    """

    arrays: dict[str, jax.Array]
    index: jax.Array

    def __getattr__(self, name: str) -> jax.Array:
        arrays = self.__dict__.get("arrays", {})
        if name not in arrays:
            raise AttributeError(f"the batch has no array {name!r}; the data has {', '.join(arrays)}")
        return arrays[name]


class DataSpec(NamedTuple):
    """What a model is built for: each array's (name, shape of one example, dtype), and how many
    classes the labels ``y`` have (None: the data has no class labels)."""

    arrays: tuple[tuple[str, tuple[int, ...], str], ...]
    num_classes: int | None

    def shape(self, name: str = "x") -> tuple[int, ...]:
        """One example's shape of the array ``name`` (an image's (H, W, C) for ``x`` of images)."""
        return next(shape for found, shape, _ in self.arrays if found == name)


def image_spec(image_shape: tuple[int, ...], num_classes: int) -> DataSpec:
    """The DataSpec of images ``x`` uint8[H, W, C] with class labels ``y`` (MNIST's: (28, 28, 1), 10 classes)."""
    return DataSpec((("x", tuple(image_shape), "uint8"), ("y", (), "int32")), num_classes)


def data_spec(dataset, name: str) -> DataSpec:
    """What a model built for ``dataset`` (a ``data.Dataset`` of the data set ``name``) must take and predict."""
    arrays = tuple((key, tuple(int(size) for size in array.shape[1:]), str(array.dtype))
                   for key, array in dataset.train.items())
    return DataSpec(arrays, data.classes(name, dataset))


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: compiled programs are cached per objective
class Objective:
    # (config, data spec, key of the init stream) -> the model, an nnx.Module
    build: Callable[[Config, DataSpec, jax.Array], nnx.Module]
    # (model, batch, config, keys) -> (mean loss, metric sums with "count"); keys.<stream> is key[B],
    # one key per example, for each stream of ``streams``
    train_loss: Callable[[nnx.Module, Batch, Config, streams.Keys], tuple[jax.Array, dict]]
    # (model, batch of the test split, config) -> (per-example metrics {name: float[B]} with "loss",
    #                                             class probabilities float[B, classes] if ``classifier`` else None)
    eval_metrics: Callable[[nnx.Module, Batch, Config], tuple[dict, jax.Array | None]]
    # The per-example streams the loss draws from, built-in or its own (every run also draws init and shuffle).
    streams: tuple[str, ...] = ()
    # config -> the streams of ``streams`` this config really draws from (default: all of them)
    drawn: Callable[[Config], tuple[str, ...]] | None = None
    classifier: bool = False
    # curves.png: panel title -> the metrics plotted in it
    panels: tuple[tuple[str, tuple[str, ...]], ...] = (("loss", ("train_loss", "test_loss")),)
    # (config, graphdef, params, host data set) -> (what the manifest adds after training,
    #                                              pictures: {file name: (images float[N, H, W, C], columns)})
    final_evaluation: Callable | None = None
    name: str = "custom"  # as the manifest records it; ``resolve`` sets the name it was found by
    # The settings this objective owns: a frozen subclass of jaxseed.config.Settings, each field made by
    # ``jaxseed.config.setting``; every field is a flag (--dropout-rate) and ``config.settings.<field>``.
    settings: type = NoSettings

    @property
    def run_streams(self) -> tuple[str, ...]:
        """Every stream a run of this objective draws from."""
        return (*streams.EVERY_RUN, *self.streams)

    def drawn_streams(self, config: Config) -> tuple[str, ...]:
        """The streams a run with ``config`` really draws from (``sample`` only with --subsample)."""
        every_run = tuple(name for name in streams.EVERY_RUN if name != "sample" or config.subsample is not None)
        return (*every_run, *(self.drawn(config) if self.drawn else self.streams))

    def finish(self, config: Config, graphdef: nnx.GraphDef, params: nnx.State, dataset) -> tuple[dict, dict]:
        return self.final_evaluation(config, graphdef, params, dataset) if self.final_evaluation else ({}, {})


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]; float images as they are, in float32."""
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)


def eval_keys(position: int, index: jax.Array) -> jax.Array:
    """Per-example keys of the fixed evaluation draws at ``position``."""
    return streams.example_keys(streams.evaluation_key(), position, index)


def built_in() -> tuple[str, ...]:
    """The built-in models: one module each in jaxseed/models/ (listed without importing them)."""
    from jaxseed import models

    return tuple(sorted(module.name for module in pkgutil.iter_modules(models.__path__)))


@functools.lru_cache(maxsize=64)  # one object per name: compiled programs are cached per objective
def resolve(name: str) -> Objective:
    """The objective ``name`` names: a built-in model (``cnn``), ``package.module:NAME`` or
    ``path/to/file.py:NAME``. UserError (one line) if it does not import or is not an objective."""
    if name in built_in():
        found = importlib.import_module(f"jaxseed.models.{name}").OBJECTIVE
    else:
        module_name, attribute = userimport.split_name(name)
        if not module_name or not attribute.isidentifier():
            raise UserError(f"{name!r} is neither a built-in model ({', '.join(built_in())}) nor an objective "
                            "named as package.module:NAME or path/to/file.py:NAME")
        found = userimport.load(name, "objective")
    return check(found, name)


def check(found, name: str) -> Objective:
    """``found`` if it is an objective whose declared streams are valid; its name set to ``name``."""
    if not isinstance(found, Objective):
        raise UserError(f"{name} is not a jaxseed.objective.Objective (it is {type(found).__name__})")
    declared = found.streams
    if not isinstance(declared, tuple) or len(set(declared)) != len(declared):
        raise UserError(f"{name}: streams must be a tuple of distinct names, got {declared!r}")
    for stream in declared:
        if stream in streams.EVERY_RUN:
            raise UserError(f"{name}: every run draws {stream!r}; declare only the per-example streams")
        if stream not in streams.PER_EXAMPLE:
            streams.check_stream_name(stream)
    own = found.settings
    if not (isinstance(own, type) and issubclass(own, Settings)
            and own.__dataclass_params__.frozen):
        raise UserError(f"{name}: settings must be a frozen dataclass subclassing jaxseed.config.Settings, "
                        f"got {own!r}")
    clashes = sorted(set(setting_fields(own)) & set(setting_fields(Config)))
    if clashes:
        raise UserError(f"{name}: its setting {clashes[0]} is also one of Config's; rename it")
    ids = [streams.stream_id(stream) for stream in found.run_streams]
    if len(set(ids)) != len(ids):
        raise UserError(f"{name}: two of its streams' names map to one id; rename one")
    return found if found.name == name else dataclasses.replace(found, name=name)


def source_hash(objective: Objective) -> str | None:
    """sha256 of the file that defines the objective's loss (None if it has no file)."""
    try:
        with open(inspect.getsourcefile(objective.train_loss), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (TypeError, OSError):
        return None


def recorded_source(record: dict) -> str | None:
    """The sha256 of the objective's source that a manifest records (None where it records none)."""
    entry = record.get("objective")
    return entry.get("source_sha256") if isinstance(entry, dict) else None


@functools.lru_cache(maxsize=16)  # an ablation's runs share one shape: traced once, not once per run
def check_shapes(objective: Objective, config: Config, spec: DataSpec, batch_size: int) -> None:
    """Trace the objective on an abstract batch, so that what it returns is checked before
    training starts: UserError (one line) naming what is wrong."""
    if type(config.settings) is not objective.settings:
        raise UserError(f"the settings of objective {objective.name} are a {objective.settings.__qualname__}, not a "
                        f"{type(config.settings).__qualname__}")
    if objective.classifier and spec.num_classes is None:
        raise UserError(f"objective {objective.name} is a classifier, but the data has no class labels (an integer "
                        "y of one label per example)")
    batch = Batch({name: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for name, shape, dtype in spec.arrays},
                  jax.ShapeDtypeStruct((batch_size,), jnp.int32))
    key_type = jax.eval_shape(streams.evaluation_key).dtype
    keys = streams.Keys({name: jax.ShapeDtypeStruct((batch_size,), key_type) for name in objective.streams})

    def train(key, batch, keys):
        return objective.train_loss(objective.build(config, spec, key), batch, config, keys)

    def evaluate(key, batch):
        return objective.eval_metrics(objective.build(config, spec, key), batch, config)

    init = jax.ShapeDtypeStruct((), key_type)
    try:
        loss, sums = jax.eval_shape(train, init, batch, keys)
        metrics, probabilities = jax.eval_shape(evaluate, init, batch)
    except UserError:
        raise
    except Exception as error:  # the user's code failed on a batch of the data's shape
        shapes = ", ".join(f"{name} {dtype}{list(shape)}" for name, shape, dtype in spec.arrays)
        raise UserError(f"objective {objective.name} failed on a batch of the data ({shapes} per example): "
                        f"{one_line(error, with_type=True)}") from None
    problems = []
    if objective.drawn and not set(objective.drawn(config)) <= set(objective.streams):
        problems.append(f"drawn returns streams it does not declare: {objective.drawn(config)}")
    if getattr(loss, "shape", None) != ():
        problems.append(f"train_loss must return a scalar mean loss first, got shape {getattr(loss, 'shape', loss)}")
    if not isinstance(sums, dict) or not {"loss", "count"} <= set(sums) or any(np.shape(v) != () for v in
                                                                                sums.values()):
        problems.append("train_loss's metric sums must be a dict of scalars with 'loss' and 'count'")
    if not isinstance(metrics, dict) or "loss" not in metrics or any(
            np.shape(v) != (batch_size,) for v in metrics.values()):
        problems.append(f"eval_metrics must return a dict with 'loss' of per-example values float[{batch_size}]")
    elif isinstance(sums, dict):
        logged = {f"train_{name}" for name in sums if name != "count"} | {f"test_{name}" for name in metrics}
        unknown = [name for _, names in objective.panels for name in names if name not in logged]
        if unknown:
            problems.append(f"panels name metrics it does not compute: {', '.join(unknown)}")
    expected = (batch_size, spec.num_classes) if objective.classifier else None
    got = None if probabilities is None else np.shape(probabilities)
    if got != expected:
        problems.append(f"eval_metrics must return class probabilities of shape {expected} "
                        f"(classifier={objective.classifier}), got {got}")
    if problems:
        raise UserError(f"objective {objective.name}: " + "; ".join(problems))
