"""Re-run a recorded run on this machine and check it computes the same model.

    python -m jaxseed.verify WORKDIR

Prints MATCH (exit 0) or MISMATCH (exit 1) of ``param_hash``; on a mismatch,
what differs between the two environments, which streams drew differently,
and the first epoch whose metrics differ; where every stream drew the same, the likely
cause (the thread pool, the CPU, the package versions) and whether the final test
metrics agree within ``METRIC_TOLERANCE``.
It says first what equality to expect: a ``--portable`` run the same bits on any
x86 CPU with AVX2 and any XLA CPU thread pool, another run only on a CPU like the one
it ran on with the same pool (``--cpu-threads``, recorded; any number of cores).
"""

from __future__ import annotations

import os
import sys
import tempfile

from jaxseed import cli, entry, loop, machine, rundir
from jaxseed.objective import recorded_source as objective_source

PROG = "python -m jaxseed.verify"

_ENVIRONMENT = ("versions", "backend", "device_count", "device_kinds", "xla_flags", "thread_pool", "generator",
                "default_matmul_precision", "data_hash", "cpu")
# Final test metrics of two runs that differ only in float rounding (another CPU's code)
# agree within this relative tolerance: measured differences were <= 0.7% (test loss
# 0.073223 vs 0.072707 after 2 epochs on 10,000 images, with and without SSE4_2 code; the
# README's reference runs), below the spread the seeds cause.
METRIC_TOLERANCE = 0.02


def compare(recorded: dict, rerun: dict, recorded_metrics: list[dict], rerun_metrics: list[dict]) -> list[str]:
    """Lines explaining how two manifests (and their metrics) differ."""
    lines = [f"{field}: recorded {recorded.get(field)!r}, here {rerun.get(field)!r}"
             for field in _ENVIRONMENT if recorded.get(field) != rerun.get(field)]
    fingerprints = recorded.get("fingerprints")
    drawn = [name for name, value in (fingerprints if isinstance(fingerprints, dict) else {}).items()
             if rerun["fingerprints"].get(name) != value]
    lines.append(f"streams that drew differently: {', '.join(drawn)}" if drawn
                 else "every stream drew the same values")
    ignored = {"training_seconds", "evaluation_seconds"}
    for old, new in zip(recorded_metrics, rerun_metrics):
        changed = [k for k in old if k not in ignored and old[k] != new.get(k)]
        if changed:
            lines.append(f"first epoch whose metrics differ: {old['epoch']} ({', '.join(changed)})")
            break
    cause = _cause(recorded, rerun)
    if cause and not drawn and recorded_metrics and rerun_metrics:
        lines += _across_machines(recorded_metrics[-1], rerun_metrics[-1], cause)
    return lines


def portable(manifest: dict) -> bool:
    config = manifest.get("config")
    return isinstance(config, dict) and config.get("portable") is True


def expectation(manifest: dict) -> str:
    if portable(manifest):
        pool = "any" if machine.pool_free(True, manifest.get("xla_flags")) else "same"
        return (f"--portable run: the same bits expected on any x86 CPU with AVX2 (same versions and flags, {pool} "
                "thread pool)")
    return "not a --portable run: the same bits expected only on a CPU like the one it ran on (same thread pool)"


def _cause(recorded: dict, rerun: dict) -> str | None:
    """The likely cause of other bits from the same draws: the thread pool, XLA's flags, the CPU or the versions."""
    pools = recorded.get("thread_pool"), rerun.get("thread_pool")
    if pools[0] != pools[1] and not machine.pool_free(portable(recorded), recorded.get("xla_flags")):
        return (f"likely cause: another XLA CPU thread pool ({pools[0] or 'not recorded'} threads recorded, "
                f"{pools[1]} here; its kernels split their sums by thread): a run of --cpu-threads N on as many "
                "CPU devices as the recorded one gets N threads on any number of cores")
    flags = recorded.get("xla_flags"), rerun.get("xla_flags")
    if flags[0] != flags[1]:
        return (f"likely cause: other XLA flags ({flags[0]!r} recorded, {flags[1]!r} here): set XLA_FLAGS to the "
                "recorded ones before the rerun")
    cpus = recorded.get("cpu"), rerun.get("cpu")
    if isinstance(cpus[0], dict) and isinstance(cpus[1], dict) and not machine.same_cpu(*cpus):
        if portable(recorded):
            return ("likely cause: another CPU, although the run was --portable (a CPU without AVX2, or another "
                    "jax version's kernels: report it)")
        return ("likely cause: another CPU (without --portable, XLA CPU's code and its kernel libraries depend on "
                "the CPU, so float rounding differs; train with --portable for bits that travel)")
    if recorded.get("versions") != rerun.get("versions"):
        return ("likely cause: other package versions (another jax or jaxlib compiles other code): install the "
                "recorded ones, as in requirements.lock")
    return None


def _across_machines(old: dict, new: dict, cause: str) -> list[str]:
    """Another CPU, same draws: name the likely cause and compare the final metrics within tolerance."""
    lines = [cause]
    numbers = (int, float)
    for name in sorted(k for k in old if k.startswith("test_") and isinstance(old[k], numbers)
                       and isinstance(new.get(k), numbers)):
        close = abs(new[name] - old[name]) <= METRIC_TOLERANCE * abs(old[name])
        lines.append(f"{name}: recorded {old[name]:.6g}, here {new[name]:.6g} "
                     f"({'within' if close else 'OUTSIDE'} {METRIC_TOLERANCE:.0%})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = cli.new_parser(PROG, __doc__.splitlines()[0])
    parser.add_argument("workdir", help="folder of a finished run (holds manifest.json)")
    parser.add_argument("--data-dir", help="read the run's IDX files from this folder (needed when the manifest's "
                                           "data_dir is outside the run folder: a manifest never chooses what is read)")
    parser.add_argument("--data", help="the run's data set, where it is now (npz:FILE; needed when the recorded file "
                                       "is outside the run folder)")
    parser.add_argument("--objective", help="the run's objective (package.module:NAME or path/to/file.py:NAME): "
                                            "needed for a run of your own objective, which a manifest never imports")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    def rerun() -> int:
        recorded = rundir.read_manifest(args.workdir, finished=True)
        given = {"--data-dir": args.data_dir, "--data": args.data, "--objective": args.objective}
        named = [item for flag, value in given.items() if value is not None for item in (flag, value)]
        config, objective, seeds = cli.resolve_resume(cli.train_parser().parse_args(named), args.workdir)
        # The YNNPACK fusions it was trained with: they decide the bits, and the default changed (issue 33).
        fusions = machine.keep_recorded_fusions(recorded.get("xla_flags"))
        if fusions and fusions != machine.ynn_fusions(config.portable):
            print(f"rerun with the recorded run's {fusions} (this version's default for it: "
                  f"{machine.ynn_fusions(config.portable)})")
        # Its own programs, compiled here: no persistent cache, which could hand back the original run's.
        entry.start_jax(config, compilation_cache=False)
        with tempfile.TemporaryDirectory(prefix="jaxseed-verify-") as scratch:
            try:
                rerun = loop.train_and_evaluate(config, seeds, os.path.join(scratch, "run"), progress=not args.quiet,
                                                objective=objective)
            except KeyboardInterrupt:
                raise entry.Interrupted("interrupted; nothing was compared") from None
            rerun_metrics = rundir.read_metrics(os.path.join(scratch, "run"))
        print(f"data: {config.data}{f' from {config.data_dir}' if config.data_dir else ''}, data_hash "
              f"{rerun['data_hash']} ({'the same as' if rerun['data_hash'] == recorded.get('data_hash') else 'NOT'} "
              "the recorded one)")
        print(expectation(recorded))
        if objective_source(recorded) not in (None, objective_source(rerun)):
            print(f"objective {objective.name}: its source file differs from the one the run was trained with")
        if rerun["param_hash"] == recorded["param_hash"]:
            print(f"MATCH param_hash {rerun['param_hash']}")
            return 0
        print(f"MISMATCH param_hash recorded {recorded['param_hash']}, here {rerun['param_hash']}")
        for line in compare(recorded, rerun, rundir.read_metrics(args.workdir), rerun_metrics):
            print(f"  {line}")
        return 1

    return entry.run("jaxseed.verify", rerun)


if __name__ == "__main__":
    sys.exit(main())
