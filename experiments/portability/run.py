"""Issue 18: does a seed give the same weights on another x86 CPU? The reference runs of both
models, with and without --portable, on this CPU and on CPUs emulated by qemu-user.

    apt-get install -y qemu-user
    python experiments/portability/run.py [--cpus Haswell-v4,EPYC-Rome,Skylake-Client-v3,Broadwell-v4] [--jobs 2]

Each run takes minutes under emulation (~50x slower), so every finished run is kept in
results.json here and not run again (delete a row to redo it); README.md is written from all
of them. Without --portable only the first emulated CPU runs: it is enough to show that the
bits move. Under qemu-user /proc/cpuinfo is still the host's, so the compilation cache is off.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results.json")
NATIVE = "this CPU (native)"
DATA = os.path.join("tests", "data", "mnist-slice")  # in the repository: anyone can rerun it offline
COMMAND = ["--seed", "0", "--epochs", "1", "--train-limit", "512", "--batch-size", "64", "--data-dir", DATA]
# The VAE's final log-likelihood with 100 importance samples per test image ran for over 20 minutes
# under emulation; one sample keeps it to minutes and changes no trained bit (it runs after training).
MODEL_OPTIONS = {"vae": ["--importance-samples", "1"]}


def run(cpu: str, model: str, portable: bool) -> dict:
    """One reference run, natively or under ``qemu-x86_64 -cpu CPU``: what its manifest says."""
    workdir = tempfile.mkdtemp(prefix="jaxseed-portability-")
    command = [sys.executable, "-m", "jaxseed.train", *COMMAND, "--quiet", "--model", model,
               *MODEL_OPTIONS.get(model, []), "--workdir", workdir,
               *(["--portable"] if portable else [])]
    if cpu != NATIVE:
        command = ["qemu-x86_64", "-cpu", cpu, *command]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "JAXSEED_COMPILATION_CACHE": ""})
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "manifest.json")) as f:
        info = json.load(f)
    return {"model": model, "portable": portable, "cpu": cpu, "param_hash": info["param_hash"],
            "train_loss": info["final"]["train_loss"], "test_loss": info["final"]["test_loss"],
            "wall_seconds": round(time.perf_counter() - start), "cpu_model": info["cpu"]["model"],
            "versions": {name: info["versions"][name] for name in ("jax", "jaxlib")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", default="Haswell-v4,EPYC-Rome,Skylake-Client-v3,Broadwell-v4",
                        help="qemu CPU models, comma-separated (qemu-x86_64 -cpu help)")
    parser.add_argument("--models", default="cnn,vae")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (an emulated run keeps one core busy)")
    args = parser.parse_args()
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else []
    cpus = args.cpus.split(",")
    todo = [(cpu, model, portable) for model in args.models.split(",") for portable in (True, False)
            for cpu in [NATIVE, *cpus[:None if portable else 1]]
            if not any((r["cpu"], r["model"], r["portable"]) == (cpu, model, portable) for r in results)]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # threads: each run is a process
        futures = [pool.submit(run, *planned) for planned in todo]
        try:
            for done in concurrent.futures.as_completed(futures):
                results.append(done.result())
                with open(RESULTS, "w") as f:
                    json.dump(results, f, indent=1)
                print(results[-1], flush=True)
        except BaseException:  # a failed run (or ^C): start no other
            pool.shutdown(cancel_futures=True)
            raise
    write_readme(results)


def write_readme(results: list[dict]) -> None:
    native = {(r["model"], r["portable"]): r for r in results if r["cpu"] == NATIVE}
    rows = []
    for r in sorted(results, key=lambda r: (r["model"], r["portable"], r["cpu"] != NATIVE)):
        same = r["param_hash"] == native[(r["model"], r["portable"])]["param_hash"]
        rows.append(f"| `{r['model']}` | {'yes' if r['portable'] else 'no'} | {r['cpu']} | "
                    f"`{r['param_hash'][:16]}…` | "
                    f"{'same' if same else '**differs**'} | {r['train_loss']:.6f} | {r['test_loss']:.6f} | "
                    f"{r['wall_seconds']} s |")
    host = next(iter(native.values()))
    lines = ["# The same seed on other x86 CPUs", "",
             f"`python -m jaxseed.train {' '.join(COMMAND)} --model M [--portable]` (for the VAE also "
             f"`{' '.join(MODEL_OPTIONS['vae'])}`), natively on this CPU "
             f"({host['cpu_model']}, with AVX-512) and under `qemu-x86_64 -cpu MODEL` (qemu {qemu_version()}: the "
             "emulated CPU's cpuid, vector extensions and cache sizes, exact IEEE arithmetic). jax and jaxlib "
             f"{host['versions']['jax']}. Train and test loss are those of the run's one epoch.", "",
             "| model | `--portable` | CPU | `param_hash` | vs native | train loss | test loss | wall time |",
             "|---|---|---|---|---|---|---|---|", *rows, "",
             "Command: `python experiments/portability/run.py --jobs 2` (finished runs are kept in results.json). "
             "Wall time: each run's, from the command to its end, while another ran on the other core.", ""]
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def qemu_version() -> str:
    return subprocess.run(["qemu-x86_64", "--version"], capture_output=True, text=True).stdout.split()[2]


if __name__ == "__main__":
    main()
