"""A study's finished runs in one compressed ``.npz``: each run's name, seeds, metrics and
fingerprint (JSON), its per-example outputs stacked, and the study's header. The engine writes one
per run as it finishes (``runs/NAME.npz``, so that shards sharing a folder never write one file)
and ``records.npz`` of all of them, which committed beside a report lets another machine or
session continue the study (``--records``). Read as input: a records file may come from anyone."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from jaxseed import npyfile, rundir
from jaxseed.errors import UserError, one_line
from jaxseed.study.result import PER_EXAMPLE, Result, checked

RECORDS = "records.npz"
MAX_BYTES = 4 << 30  # 10,000 runs' probabilities on CIFAR-10's test set stay below this


class Records(NamedTuple):
    header: dict
    names: list[str]
    seeds: list[dict]
    results: list[Result]


def write(folder: rundir.RunFolder, file: str, records: Records) -> None:
    """``records`` into ``file`` of ``folder`` (whole or not at all); nothing for no runs."""
    if not records.names:
        return
    arrays = {"header": np.array(json.dumps(records.header)), "names": np.array(records.names, dtype=str),
              "runs": np.array([json.dumps({"seeds": s, "metrics": dict(r.metrics), "fingerprint": r.fingerprint})
                                for s, r in zip(records.seeds, records.results)], dtype=str)}
    for key in records.results[0].per_example:
        arrays[key] = np.stack([r.per_example[key] for r in records.results])
    folder.save_arrays(file, arrays)


def read(path: str, follow_link: bool = False) -> Records:
    """The records at ``path``; FileNotFoundError if absent, UserError (one line) if it is not a
    records file. Every array's size is read from its header before any data."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow_link else os.O_NOFOLLOW))
        with os.fdopen(fd, "rb") as f, np.load(f, allow_pickle=False) as stored:
            outputs = tuple(key for key in PER_EXAMPLE if key + ".npy" in stored.zip.namelist())
            shapes = npyfile.npz_headers(stored.zip, ("header", "names", "runs", *outputs))
            runs = shapes["names"][0][0] if len(shapes["names"][0]) == 1 else -1
            if (runs < 0 or shapes["header"][0] != () or any(shapes[key][0] != (runs,) for key in ("names", "runs"))
                    or any(shapes[key][1].kind != "U" for key in ("header", "names", "runs"))
                    or any(shapes[key][0][:1] != (runs,) for key in outputs)
                    or sum(np.prod(shape) * dtype.itemsize for shape, dtype in shapes.values()) > MAX_BYTES):
                raise ValueError("its arrays are not a study's records (a name, a run and outputs per run)")
            header = json.loads(str(stored["header"]))
            names, texts = stored["names"].tolist(), stored["runs"].tolist()
            arrays = {key: stored[key] for key in outputs}
    except FileNotFoundError:
        raise
    except KeyError as missing:
        raise UserError(f"cannot read the records {path}: it has no {missing.args[0]}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(f"cannot read the records {path}: {one_line(error)}") from None
    if not isinstance(header, dict):
        raise UserError(f"cannot read the records {path}: its header is not a study's")
    seeds, results = [], []
    for i, (name, text) in enumerate(zip(names, texts)):
        try:
            run = json.loads(text)
            run_seeds, metrics, fingerprint = run["seeds"], run["metrics"], run["fingerprint"]
        except (ValueError, TypeError, KeyError):
            raise UserError(f"cannot read the records {path}: run {name} is not a recorded run") from None
        if not isinstance(run_seeds, dict) or not all(isinstance(v, int) for v in run_seeds.values()):
            raise UserError(f"cannot read the records {path}: run {name} has no seeds")
        seeds.append(run_seeds)
        results.append(checked(Result(metrics, {key: array[i] for key, array in arrays.items()}, fingerprint),
                               f"{name} of {path}"))
    return Records(header, names, seeds, results)
