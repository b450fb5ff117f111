"""Every setting of a run, with its default, in one frozen dataclass.

The CLI overrides fields by name; the whole object is written into the manifest.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

MODELS = ("cnn", "vae")
DATASETS = ("mnist", "fashion_mnist", "synthetic")
AUGMENTATIONS = ("affine", "none")
BINARIZATIONS = ("dynamic", "threshold")
LOOPS = ("auto", "unroll", "scan")


@dataclasses.dataclass(frozen=True)
class Config:
    # What is trained.
    model: str = "cnn"
    dropout_rate: float = 0.5  # CNN
    latents: int = 20  # VAE: dimensions of the Gaussian latent
    # Data.
    data: str = "mnist"
    data_dir: Optional[str] = None  # folder of raw IDX files; None: tensorflow-datasets
    train_limit: Optional[int] = None  # train on the first N training examples
    # Augmentation (drawn from the `augment` stream, applied inside the jitted step).
    augment: str = "affine"
    max_translation: float = 2.0  # pixels, uniform in [-max, max] on each axis
    max_rotation: float = 10.0  # degrees, uniform in [-max, max]
    # VAE inputs: "dynamic" draws each pixel ~ Bernoulli(grey) from the `augment` stream.
    binarize: str = "dynamic"
    # Optimisation: AdamW, linear warm-up then cosine decay to zero.
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 3e-3  # peak
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    # Execution (changes speed, never the numbers beyond float noise).
    loop: str = "auto"  # unroll steps in one jit (XLA CPU) or lax.scan them (GPU/TPU)
    steps_per_call: int = 0  # 0: per backend (see train.execution_plan)
    eval_batch_size: int = 1000
    # Checkpoints (orbax): at each epoch's end, and at the first call boundary past
    # every `checkpoint_every` steps when > 0.
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    # Write trace.jsonl: every step's loss and a checksum of the parameters (jaxseed.diff reads it).
    trace: bool = False
    importance_samples: int = 100  # VAE: samples per test image for the final log-likelihood

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
