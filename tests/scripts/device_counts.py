"""Runs of one tiny config (one epoch) on 1, 2, 4 and 8 devices, and 8 seeds as replicas on 8 devices.

Run by tests/test_devices.py in a fresh process with JAX_NUM_CPU_DEVICES=8 (the
device count is fixed when JAX starts); prints one JSON object of manifests.
"""

import json
import os
import sys

from jaxseed import loop, mesh, streams
from jaxseed.config import Config
from jaxseed.errors import UserError

CONFIG = Config(data="synthetic", train_limit=256, batch_size=64, epochs=1, steps_per_call=4)


def seeds(base):
    return {name: base + i for i, name in enumerate(streams.STREAMS)}


def main(workdir):
    by_devices = {n: loop.train_and_evaluate(CONFIG.replace(devices=n), seeds(1), os.path.join(workdir, f"d{n}"),
                                             progress=False) for n in (1, 2, 4, 8)}
    sweep_seeds = [seeds(10 * k) for k in range(8)]
    sweep = loop.train(CONFIG.replace(devices=8), sweep_seeds, [os.path.join(workdir, f"s{k}") for k in range(8)],
                       progress=False)
    one_by_one = [loop.train_and_evaluate(CONFIG.replace(devices=1), replica_seeds, os.path.join(workdir, f"o{k}"),
                                          progress=False) for k, replica_seeds in enumerate(sweep_seeds)]
    errors = {}
    for name, plan in {"batch 60 on 8": (1, 60, 8, None), "3 replicas on seed=2": (3, 64, 8, "seed=2,data=4")}.items():
        try:
            mesh.plan(*plan)
        except UserError as error:
            errors[name] = str(error)
    json.dump({"by_devices": by_devices, "sweep": sweep, "one_by_one": one_by_one, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
