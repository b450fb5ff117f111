"""The study engine: how much each random source moves what any training function returns.

``jaxseed.study(train, streams=..., seeds=K)`` (``engine.study``),
``jaxseed.study.compare(train_a, train_b, seeds=K)`` (two functions under the same randomness) and
``python -m jaxseed.study FILE.py:FUNCTION --streams ... --seeds K [--compare FILE.py:OTHER]``. One concern per module:
``plan`` (groups, seeds, shards), ``result`` (what a run returns), ``records`` (finished runs on
disk), ``engine`` (running, resuming, sharing), ``report`` (a pure function of the results).
"""

import functools
import sys
import types

from jaxseed.study.engine import compare, study
from jaxseed.study.result import Result

__all__ = ["Result", "compare", "study"]


class _CallablePackage(types.ModuleType):
    """``jaxseed.study(...)`` calls ``engine.study`` while ``jaxseed.study.plan`` and the rest stay
    importable (a function of that name would hide the package from ``import jaxseed.study.X``)."""

    @functools.wraps(study)
    def __call__(self, *args, **kwargs):
        return study(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
