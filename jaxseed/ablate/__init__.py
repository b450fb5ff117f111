"""Ablate the key streams: how much does each random source move the result?

    python -m jaxseed.ablate --model cnn --seeds 10
    python -m jaxseed.ablate --model vae --seeds 5 --streams latent,init
    python -m jaxseed.ablate --objective my_model.py:OBJECTIVE --data npz:my_data.npz --seeds 5

Groups of K runs each:
  * one per chosen stream: only that stream's seed varies, the others stay at the base seed;
  * ``all``: every stream varies together;
  * ``none``: K reruns of the base configuration, each its own program (compiled and
    executed separately). Its spread must be exactly zero: it is the determinism
    control, and the report says so loudly when it is not.

Each run's result is stored as it finishes; rerunning the same command completes
only the missing runs. Writes ablation.json (every run, and the summary),
ablation.csv, ablation.md and ablation.png, for a classifier unstable.png (the
test images its runs disagree on), and records.npz: the finished runs, compact, from
which ``--records`` continues the study in another folder, machine or session.
The statistics are jaxseed.stats.

One concern per module: ``strategy`` (sequential or vmap, and the expected hours), ``sweep``
(what is trained, where, and whether a folder holds this sweep), ``runs`` (the built-in loop on
the study engine), ``records`` (records.npz), ``cli`` (the command). The plan, the resume loop
and the report are the study engine's (``jaxseed.study``).
"""

from jaxseed.ablate.cli import ablate_parser, main
from jaxseed.ablate.runs import load_result, run_group, run_sweep
from jaxseed.ablate.strategy import STRATEGIES, STRATEGIES_FILE, choose_strategy, expected_hours
from jaxseed.ablate.sweep import PROG, Sweep, open_sweep, plan_sweep, recorded_sweep

__all__ = ["PROG", "STRATEGIES", "STRATEGIES_FILE", "Sweep", "ablate_parser", "choose_strategy", "expected_hours",
           "load_result", "main", "open_sweep", "plan_sweep", "recorded_sweep", "run_group", "run_sweep"]
