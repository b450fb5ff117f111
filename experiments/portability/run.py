"""Issue 18: does a seed give the same weights on another x86 CPU? The reference runs of both
models, with and without --portable, on this CPU and on CPUs emulated by qemu-user.

    apt-get install -y qemu-user
    python experiments/portability/run.py [--cpus Haswell-v4,EPYC-Rome,Skylake-Client-v3,Broadwell-v4] [--jobs 2]

Each run takes minutes under emulation (~50x slower), so every finished run is kept in
results.json beside the README (delete a row to redo it), with what decides its bits: jaxseed's
code, the versions of jax, jaxlib, flax and optax, XLA_FLAGS, and for a native run this CPU.
A kept run whose record differs from this checkout and machine is run again, so README.md,
written from all of them, never mixes code or machines. Without --portable only the first
emulated CPU runs: it is enough to show that the bits move. Under qemu-user /proc/cpuinfo is
still the host's, so the compilation cache is off.
--tiny trains the CNN alone on fewer examples, natively unless --cpus names CPUs (an emulated
run would take minutes even so; tests/test_portable.py checks the emulated bits), and keeps
no results.json.
"""

import ast
import concurrent.futures
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from common import Verdict, judge, scratch  # noqa: E402

from jaxseed.errors import UserError  # noqa: E402

ROOT = os.path.dirname(common.HERE)
NATIVE = "this CPU (native)"
DATA = os.path.join(ROOT, "tests", "data", "mnist-slice")  # in the repository: anyone can rerun it offline
CPUS = "Haswell-v4,EPYC-Rome,Skylake-Client-v3,Broadwell-v4"
SIZES = ["--epochs", "1", "--train-limit", "512", "--batch-size", "64"]
TINY_SIZES = ["--epochs", "1", "--train-limit", "128", "--batch-size", "64"]
# The VAE's final log-likelihood with 100 importance samples per test image ran for over 20 minutes
# under emulation; one sample keeps it to minutes and changes no trained bit (it runs after training).
MODEL_OPTIONS = {"vae": ["--importance-samples", "1"]}


class Result(NamedTuple):
    command: list[str]  # the flags of every run, --model and --portable aside
    rows: list[dict]  # one per run, as kept in results.json
    verdict: Verdict


def train_command(args) -> list[str]:
    """The flags of every run (run from the repository's root), --model and --portable aside."""
    data_dir = os.path.relpath(os.path.abspath(args.data_dir), ROOT)
    return ["--seed", "0", *(TINY_SIZES if args.tiny else SIZES), "--data-dir", data_dir]


def choices(args) -> tuple[list[str], list[str]]:
    """(the CPUs to emulate, the models): as the flags name them, else --tiny's or the full run's."""
    cpus = args.cpus if args.cpus is not None else ("" if args.tiny else CPUS)
    return [cpu for cpu in cpus.split(",") if cpu], (args.models or ("cnn" if args.tiny else "cnn,vae")).split(",")


# One parse at a time: CPython 3.11.7's ast.parse, called from two of run()'s threads at once, failed here
# with "SystemError: AST constructor recursion depth mismatch".
_PARSING = threading.Lock()


def provenance(cpu: str, host: dict) -> dict:
    """What decides a run's bits besides its flags: jaxseed's code (the syntax tree of every module of
    the package, without comments and docstrings: editing those reruns nothing), the versions of the
    libraries that compute, XLA_FLAGS, and for a native run the CPU (``host``:
    model and vector extensions; qemu emulates its CPU whatever the host)."""
    package = os.path.join(ROOT, "jaxseed")
    source = hashlib.sha256()
    for folder, subfolders, files in sorted(os.walk(package)):
        subfolders.sort()
        for name in sorted(file for file in files if file.endswith(".py")):
            with open(os.path.join(folder, name)) as f, _PARSING:
                tree = code_only(ast.parse(f.read()))
            source.update(f"{os.path.relpath(os.path.join(folder, name), package)}\0{ast.dump(tree)}\0".encode())
    return {"jaxseed_source": source.hexdigest(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "versions": {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")},
            **({"host": host} if cpu == NATIVE else {})}


def code_only(tree: ast.Module) -> ast.Module:
    """``tree`` without its docstrings (a comment is not in a syntax tree)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def host_cpu() -> dict:
    """This machine's CPU as a native run's manifest names it (jaxseed.machine imports JAX, not started here)."""
    from jaxseed import machine
    found = machine.cpu()
    return {"cpu_model": found["model"], "vector_extensions": found["vector_extensions"]}


def run(command: list[str], cpu: str, model: str, portable: bool, host: dict) -> dict:
    """One reference run, natively or under ``qemu-x86_64 -cpu CPU``: what its manifest says, and its provenance."""
    recorded = provenance(cpu, host)  # before it starts: the source could change while it runs
    with scratch("portability") as workdir:
        line = [sys.executable, "-m", "jaxseed.train", *command, "--quiet", "--model", model,
                *MODEL_OPTIONS.get(model, []), "--workdir", workdir, *(["--portable"] if portable else [])]
        if cpu != NATIVE:
            line = ["qemu-x86_64", "-cpu", cpu, *line]
        start = time.perf_counter()
        result = subprocess.run(line, cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "JAXSEED_COMPILATION_CACHE": ""})
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"the {model} run on {cpu} failed: {last}")
        with open(os.path.join(workdir, "manifest.json")) as f:
            info = json.load(f)
    return {"model": model, "portable": portable, "cpu": cpu, "param_hash": info["param_hash"],
            "train_loss": info["final"]["train_loss"], "test_loss": info["final"]["test_loss"],
            "wall_seconds": round(time.perf_counter() - start), "cpu_model": info["cpu"]["model"],
            "vector_extensions": info["cpu"]["vector_extensions"],
            "versions": {name: info["versions"][name] for name in ("jax", "jaxlib")},
            "provenance": recorded}


def planned(args, results: list[dict]) -> list[tuple[str, str, bool]]:
    """(cpu, model, portable) of each run not yet in ``results``: every CPU with --portable, the first
    emulated one without."""
    cpus, models = choices(args)
    return [(cpu, model, portable) for model in models for portable in (True, False)
            for cpu in [NATIVE, *cpus[:None if portable else 1]]
            if not any((r["cpu"], r["model"], r["portable"]) == (cpu, model, portable) for r in results)]


def run_all(command: list[str], todo: list[tuple[str, str, bool]], results: list[dict], path: str | None,
            jobs: int, host: dict) -> None:
    """Run ``todo``, ``jobs`` at a time, adding each finished run to ``results`` (and the file ``path``)."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:  # threads: each run is a process
        futures = [pool.submit(run, command, *planned_run, host) for planned_run in todo]
        try:
            for done in concurrent.futures.as_completed(futures):
                results.append(done.result())
                if path:
                    with open(path, "w") as f:
                        json.dump(results, f, indent=1)
                print(results[-1], flush=True)
        except BaseException:  # a failed run (or ^C): start no other
            pool.shutdown(cancel_futures=True)
            raise


def judge_rows(rows: list[dict]) -> Verdict:
    """Held when each model's --portable runs share one param_hash on every CPU tried."""
    checks = []
    for model in sorted({r["model"] for r in rows}):
        portable = [r for r in rows if r["model"] == model and r["portable"]]
        native = next(r["param_hash"] for r in portable if r["cpu"] == NATIVE)
        differ = [r["cpu"] for r in portable if r["param_hash"] != native]
        if differ:
            found = f"`{model}` with --portable differs from this CPU's param_hash on {', '.join(differ)}"
        else:
            found = (f"`{model}` with --portable gave param_hash `{native[:16]}…` on all {len(portable)} CPU(s) "
                     f"tried ({', '.join(r['cpu'] for r in portable)})")
        checks.append((not differ, found))
    cpus = {r["cpu"] for r in rows if r["portable"]}
    return judge(f"with --portable a seed gives the same weights on each of the {len(cpus)} CPU(s) tried", checks)


def without_portable(rows: list[dict]) -> str:
    """What the runs without --portable showed on the other CPUs: that the bits move is why the flag exists."""
    native = {r["model"]: r["param_hash"] for r in rows if not r["portable"] and r["cpu"] == NATIVE}
    others = [f"`{r['model']}` on {r['cpu']}: {'differs' if r['param_hash'] != native[r['model']] else 'the same'}"
              for r in rows if not r["portable"] and r["cpu"] != NATIVE]
    if not others:
        return "No other CPU ran without --portable."
    return f"Without --portable, the param_hash against this CPU's: {'; '.join(others)}."


def current(rows: list[dict], host: dict) -> list[dict]:
    """The kept runs whose provenance is this checkout's and machine's (runs kept before it was recorded have none)."""
    expected = {cpu: provenance(cpu, host) for cpu in {row["cpu"] for row in rows}}  # the package hashed once per CPU
    return [row for row in rows if row.get("provenance") == expected[row["cpu"]]]


def measure(args) -> Result:
    """The runs not yet kept in --out's results.json, then the judgement of all of them."""
    path = None if args.tiny else os.path.join(args.out, "results.json")  # tiny runs take seconds: none kept
    kept = json.load(open(path)) if path and os.path.exists(path) else []
    host = host_cpu()
    results = current(kept, host)
    if len(results) < len(kept):
        print(f"{len(kept) - len(results)} kept run(s) came from other code, library versions, XLA_FLAGS or CPU "
              "than this checkout and machine: they run again", flush=True)
    os.makedirs(args.out, exist_ok=True)
    command = train_command(args)
    run_all(command, planned(args, results), results, path, args.jobs, host)
    return Result(command, results, judge_rows(results))


def report(result: Result, args) -> list[str]:
    native = {(r["model"], r["portable"]): r for r in result.rows if r["cpu"] == NATIVE}
    rows = []
    for r in sorted(result.rows, key=lambda r: (r["model"], r["portable"], r["cpu"] != NATIVE)):
        same = r["param_hash"] == native[(r["model"], r["portable"])]["param_hash"]
        rows.append(f"| `{r['model']}` | {'yes' if r['portable'] else 'no'} | {r['cpu']} | "
                    f"`{r['param_hash'][:16]}…` | "
                    f"{'same' if same else '**differs**'} | {r['train_loss']:.6f} | {r['test_loss']:.6f} | "
                    f"{r['wall_seconds']} s |")
    host = next(iter(native.values()))
    emulated = any(r["cpu"] != NATIVE for r in result.rows)
    extensions = host.get("vector_extensions")  # rows from before it was recorded have none
    avx512 = "" if extensions is None else f", {'with' if 'avx512f' in extensions else 'without'} AVX-512"
    return ["# The same seed on other x86 CPUs", "",
            f"`python -m jaxseed.train {' '.join(result.command)} --model M [--portable]` (for the VAE also "
            f"`{' '.join(MODEL_OPTIONS['vae'])}`), natively on this CPU ({host['cpu_model']}{avx512})"
            + (f" and under `qemu-x86_64 -cpu MODEL` (qemu {qemu_version()}: the emulated CPU's cpuid, vector "
               "extensions and cache sizes, exact IEEE arithmetic)" if emulated else "")
            + f". jax and jaxlib {host['versions']['jax']}. Train and test loss are those of the run's one epoch.",
            "", "| model | `--portable` | CPU | `param_hash` | vs native | train loss | test loss | wall time |",
            "|---|---|---|---|---|---|---|---|", *rows, "", result.verdict.conclusion, "",
            without_portable(result.rows), "",
            f"Command: `python experiments/portability/run.py --jobs {args.jobs}{f' --cpus {args.cpus}' if args.cpus else ''}"
            f"{' --tiny' if args.tiny else ''}` "
            "(finished runs are kept in results.json, each with what decides its bits: jaxseed's code, the "
            "library versions, XLA_FLAGS and a native run's CPU; a kept run that differs from the checkout and "
            "machine it is rerun on is run again). Wall time: each run's, from the command to its end, with up "
            f"to {args.jobs} running at once.", ""]


def qemu_version() -> str:
    return subprocess.run(["qemu-x86_64", "--version"], capture_output=True, text=True).stdout.split()[2]


def experiment(args) -> Result:
    """Measure, and write the README into ``args.out``."""
    result = measure(args)
    common.write_result(args.out, report(result, args))
    return result


def parser():
    parser = common.parser(__file__, __doc__, os.path.relpath(DATA))
    parser.add_argument("--cpus", help=f"qemu CPU models, comma-separated (qemu-x86_64 -cpu help; default: {CPUS}; "
                                       "--tiny: none)")
    parser.add_argument("--models", help="default: cnn,vae; --tiny: cnn")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (an emulated run keeps one core busy)")
    return parser


def main(argv=None) -> int:
    return common.main(parser(), experiment, argv)


if __name__ == "__main__":
    sys.exit(main())
