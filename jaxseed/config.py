"""Every setting of a run, with its default: ``Config``, what every run has, and the settings its
objective owns (``Config.settings``).

Each field carries its help text, its type and its valid values or bounds, as field
metadata (``setting``): the CLI builds one flag per field from it (``cli.add_config_flags``),
and a ``Settings`` checks them when it is built, from the CLI or from Python alike. An
objective declares its own settings as a frozen ``Settings`` dataclass (the CNN its
``dropout_rate``, the VAE its ``latents``); ``Config.settings`` holds them, and the manifest
records them beside the Config's fields, in one flat dict (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Optional

from jaxseed.errors import UserError


class _DataSets(tuple):
    """Data set names, and "npz:" followed by any path.

    ``in``, how Config and argparse check a choice, accepts both; listing the
    names shows the pattern "npz:PATH" among them (in --help and in errors).
    """

    def __contains__(self, name) -> bool:
        return super().__contains__(name) or bool(npz_path(name))


NPZ = "npz:"


def npz_path(data) -> str | None:
    """The file of ``--data npz:PATH``, or None for any other data set."""
    return data.removeprefix(NPZ) if isinstance(data, str) and data.startswith(NPZ) else None


# "mnist"/"fashion_mnist": the raw IDX files, downloaded once and cached (or read from data_dir);
# "cifar10": CIFAR-10's binary version, the same way; "npz:PATH": an .npz in keras.datasets' layout;
# "tfds:<name>": tensorflow-datasets' data_source, which needs TensorFlow to prepare the data.
DATASETS = _DataSets(("mnist", "fashion_mnist", "cifar10", "synthetic", "tfds:mnist", "tfds:fashion_mnist",
                      "npz:PATH"))
AUGMENTATIONS = ("affine", "crop_flip", "none")
LOOPS = ("auto", "unroll", "scan")


def setting(default, help: str, *, choices: tuple[str, ...] | None = None, minimum: float | None = None,
            maximum: float | None = None, above: float | None = None, below: float | None = None):
    """A field of Config or of an objective's Settings, with its help text (shown by --help) and what values are
    valid: ``choices``, inclusive ``minimum``, ``maximum``, strict ``above``, ``below``."""
    # Runs as config.py is imported, before a mutation tester can switch a mutant of it on: not mutated.
    # pragma: no mutate start
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above,
                "below": below}
    return dataclasses.field(default=default, metadata=metadata)
    # pragma: no mutate end


# The Python type each annotation admits: a manifest is input, so "10" is not 10, nor 1 True.
_TYPES = {int: ((int,), "an integer"), float: ((int, float), "a number"), str: ((str,), "a string"),
          bool: ((bool,), "true or false")}


def fields(settings) -> dict[str, tuple[dataclasses.Field, type, bool]]:
    """The settings of a ``Settings`` class or object: name -> (field, its type, whether it may be None)."""
    hints = typing.get_type_hints(settings if isinstance(settings, type) else type(settings))
    found = {}
    for field in dataclasses.fields(settings):
        if "help" in field.metadata:  # Config.settings is not one: it holds the objective's
            kinds = [kind for kind in typing.get_args(hints[field.name]) if kind is not type(None)]
            found[field.name] = field, (kinds[0] if kinds else hints[field.name]), bool(kinds)
    return found


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed settings, each field made by ``setting``, checked when built: its type, choices and bounds.

    An objective's own settings subclass it, as frozen dataclasses (``jaxseed.models.cnn.CNNSettings``).
    """

    def __post_init__(self):
        for name, (field, kind, optional) in fields(self).items():
            value, rules = getattr(self, name), field.metadata
            if kind not in _TYPES:
                raise UserError(f"setting {name} must be an int, float, str or bool (or Optional of one), "
                                f"not {kind}")
            kinds, described = _TYPES[kind]
            if value is None and optional:
                continue
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise UserError(f"{name} must be {described}{' or null' if optional else ''}, got {value!r}")
            if isinstance(value, bool):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
            if rules["choices"] and value not in rules["choices"]:
                raise UserError(f"{name} must be one of {', '.join(rules['choices'])}; got {value!r}")
            if rules["minimum"] is not None and not value >= rules["minimum"]:
                raise UserError(f"{name} must be >= {rules['minimum']}, got {value}")
            if rules["maximum"] is not None and not value <= rules["maximum"]:
                raise UserError(f"{name} must be <= {rules['maximum']}, got {value}")
            if rules["above"] is not None and not value > rules["above"]:
                raise UserError(f"{name} must be > {rules['above']}, got {value}")
            if rules["below"] is not None and not value < rules["below"]:
                raise UserError(f"{name} must be < {rules['below']}, got {value}")

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in fields(self)}


@dataclasses.dataclass(frozen=True)
class NoSettings(Settings):
    """The settings of an objective that declares none."""


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    """What every run has; ``settings``, what its objective owns (default: that objective's defaults).

    ``replace`` sets either kind by name; a changed ``model`` starts from its objective's defaults.
    """

    # What is trained.
    # A built-in model (a module of jaxseed/models/) or a user's objective, package.module:NAME or
    # path/to/file.py:NAME; objective.resolve checks it (importing a user's module is the resolver's job).
    model: str = setting("cnn", "a built-in model (cnn, vae) or your objective as package.module:NAME or "
                                "path/to/file.py:NAME (also --objective)")
    # Data.
    data: str = setting("mnist", "data set", choices=DATASETS)
    data_dir: Optional[str] = setting(None, "read the data set's files from this folder, with no network: MNIST's four "
                                            "IDX files (train-images-idx3-ubyte[.gz], ...) or CIFAR-10's binary "
                                            "version (default: download once, then the cache)")
    train_limit: Optional[int] = setting(None, "train on the first N training examples", minimum=1)
    # Which examples a run trains on, drawn once per run from the `sample` stream (off: all of them).
    subsample: Optional[float] = setting(None, "train on a fraction F of the training examples, drawn from the "
                                               "'sample' stream (default: all)", above=0.0, maximum=1.0)
    # Augmentation (drawn from the `augment` stream, applied inside the jitted step).
    augment: str = setting("affine", "CNN and your objectives: on-device augmentation from the 'augment' stream: "
                                     "a small rotation and shift, or a padded random crop and horizontal flip",
                           choices=AUGMENTATIONS)
    crop_padding: int = setting(4, "crop_flip: zeros padded on each side before the random crop", minimum=0,
                                maximum=1024)
    max_translation: float = setting(2.0, "pixels; shifts are uniform in [-max, max] on each axis", minimum=0.0,
                                     maximum=1000.0)
    max_rotation: float = setting(10.0, "degrees; rotations are uniform in [-max, max]", minimum=0.0, maximum=180.0)
    # Optimisation: AdamW, linear warm-up then cosine decay to zero.
    epochs: int = setting(10, "training epochs", minimum=1, maximum=100_000)
    batch_size: int = setting(128, "examples per step", minimum=1, maximum=1 << 20)
    learning_rate: float = setting(3e-3, "peak learning rate of AdamW", above=0.0)
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warm-up", minimum=0.0)
    weight_decay: float = setting(1e-4, "AdamW's decoupled weight decay", minimum=0.0)
    # Execution (changes speed, never the numbers beyond float noise).
    loop: str = setting("auto", "how steps are compiled: unrolled in one jit or lax.scan (auto: per backend)",
                        choices=LOOPS)
    steps_per_call: int = setting(0, "training steps per jitted call (0: per backend)", minimum=0, maximum=100_000)
    # 250: the CNN's per-example outputs are the same bits as in chunks of 1000, its evaluation 1.6x as fast
    # on CPU, and the chunk's buffers ~100 MB smaller: they set a run's peak memory (benchmarks/README.md)
    eval_batch_size: int = setting(250, "test examples per evaluation call", minimum=1, maximum=1 << 20)
    # Where it runs (see jaxseed.mesh): replicas over "seed", each batch over "data".
    devices: int = setting(0, "devices to run on (0: all, of every process)", minimum=0)
    mesh: Optional[str] = setting(None, "split of the devices as seed=S,data=D (default: replicas first, "
                                        "the rest splits each batch)")
    # GPU kernels that pick their algorithm (or accumulate with atomics) at run time can round
    # differently from run to run; this flag asks XLA for deterministic ones (recorded).
    deterministic: bool = setting(False, "GPU: deterministic kernels (--xla_gpu_deterministic_ops=true; set before "
                                         "JAX starts); no effect on CPU and TPU")
    # Pin what XLA CPU computes to what any x86 CPU with AVX2 computes alike (recorded); see
    # jaxseed.machine.
    portable: bool = setting(False, "the same bits on other x86 CPUs with AVX2: XLA CPU's code capped at AVX, its "
                                    "kernel library's CPU-dependent arithmetic off, the VAE's kernel gradients summed "
                                    "in a fixed order (set before JAX starts; ~2%% slower; see the README)")
    # XLA CPU's thread pool, fixed so that the bits do not follow the machine's cores (its kernels split
    # their sums by thread); see jaxseed.machine. 2, from benchmarks/cpu_threads.py on 2 cores: 8 threads
    # cost the VAE a quarter of its images/s there (the README's table). A process of D CPU devices
    # has max(cpu_threads, D) threads (XLA's rule): it matches plain runs of that many. --portable's
    # bits were the same on pools of 1, 2 and 4 (tests/test_portable.py), the default's were not.
    cpu_threads: int = setting(2, "XLA CPU's thread pool: this many threads on any number of cores, so the bits do "
                                  "not depend on them (0: one per usable core, as XLA chooses; the bits then follow "
                                  "the core count; with --portable they follow neither); set before JAX starts",
                               minimum=0, maximum=4096)
    # Checkpoints (orbax): at each epoch's end, and at the first call boundary past every
    # `checkpoint_every` steps when > 0.
    checkpoint_every: int = setting(0, "also checkpoint every N steps (0: at the end of each epoch only)", minimum=0)
    keep_checkpoints: int = setting(3, "checkpoints kept", minimum=1, maximum=1000)
    trace: bool = setting(False, "write trace.jsonl: each step's loss and parameter checksum (for jaxseed.diff)")

    # The objective's own settings (a Settings of the class its Objective declares); None: its defaults.
    settings: Optional[Settings] = None

    def __post_init__(self):
        if self.settings is None and isinstance(self.model, str):  # else the model's check below refuses it
            object.__setattr__(self, "settings", _declared_settings(self.model)())
        elif self.settings is not None and not isinstance(self.settings, Settings):
            raise UserError(f"settings must be a jaxseed.config.Settings, got {type(self.settings).__name__}")
        super().__post_init__()

    def num_kept(self, num_train: int) -> int | None:
        """How many training examples ``subsample`` keeps of ``num_train`` (None: no subsampling)."""
        # The nearest integer, halves up (Python's round() would take halves to even).
        return None if self.subsample is None else min(num_train, max(1, math.floor(self.subsample * num_train + 0.5)))

    def replace(self, **changes) -> "Config":
        """A copy with ``changes``: Config fields, and settings of the objective (of the new ``model``
        where it changes, starting from its defaults); UserError naming a setting neither has."""
        own = {name: value for name, value in changes.items() if name in _FIELDS}
        if own.get("model", self.model) != self.model and "settings" not in own:
            own["settings"] = None
        config = dataclasses.replace(self, **own)
        rest = {name: value for name, value in changes.items() if name not in _FIELDS}
        unknown = sorted(set(rest) - set(fields(config.settings)))
        if unknown:
            raise UserError(f"{unknown[0]} is not a setting of jaxseed's Config or of the model {config.model} "
                            f"(its own: {', '.join(fields(config.settings)) or 'none'})")
        return dataclasses.replace(config, settings=dataclasses.replace(config.settings, **rest)) if rest else config

    def to_dict(self) -> dict:
        """Every setting by name, the Config's then the objective's, in one flat dict (as the manifest records them)."""
        return {**super().to_dict(), **self.settings.to_dict()}


_FIELDS = {field.name for field in dataclasses.fields(Config)}


def _declared_settings(model: str) -> type:
    """The Settings class the objective ``model`` declares (resolving it: a user's module is imported)."""
    from jaxseed import objective  # objectives import this module

    return objective.resolve(model).settings
