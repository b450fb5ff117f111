"""A Grain pipeline for data that does not fit on the device, drawing what jaxseed's own draws.

    python examples/grain_pipeline.py --seed 0 --epoch 0

Each epoch reads the records in jaxseed's ``shuffle`` order and augments each record
on the host from its own ``augment`` key (the epoch and the record's place in the
training set), so a batch holds exactly the images jaxseed's on-device pipeline
makes for the same examples, whatever the batch size or the number of workers.
"""

import argparse

import grain
import jax.numpy as jnp
import numpy as np

import jaxseed
from jaxseed import augment
from jaxseed.config import Config
from jaxseed.objective import to_unit

DATA = "tests/data/fashion-mnist-small.npz"
AUGMENT = Config(augment="crop_flip", crop_padding=2)  # the setting jaxseed's step reads


def epoch_batches(images: np.ndarray, labels: np.ndarray, seeds: jaxseed.Seeds, epoch: int,
                  batch_size: int) -> grain.MapDataset:
    """Batches of {"index", "image" float[B, H, W, C] in [0, 1], augmented, "label"} for ``epoch``."""
    order = np.asarray(jaxseed.epoch_order(seeds.key("shuffle"), epoch, len(images)))
    augment_root = seeds.key("augment")

    def load(index):  # one record, its augmentation from its own key alone
        key = jaxseed.example_keys(augment_root, epoch, jnp.array([index]))
        image = augment.apply(AUGMENT, to_unit(jnp.asarray(images[index][None])), key)[0]
        return {"index": index, "image": np.asarray(image), "label": labels[index]}

    return grain.MapDataset.source(order).map(load).batch(batch_size, drop_remainder=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    arrays = np.load(DATA, allow_pickle=False)
    batches = epoch_batches(arrays["x_train"][..., None], arrays["y_train"], jaxseed.Seeds(args.seed), args.epoch,
                            args.batch_size)
    for step, batch in enumerate(batches.to_iter_dataset()):
        print(f"step {step}: examples {batch['index'][:4].tolist()}..., images {batch['image'].shape}")
