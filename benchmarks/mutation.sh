#!/usr/bin/env bash
# Mutation testing: mutmut changes the core modules one small edit at a time (pyproject.toml's
# [tool.mutmut] names them and their fast tests) and runs those tests against each mutant; a
# mutant no test fails "survives". benchmarks/README.md lists the survivors, each explained.
#   pip install mutmut && bash benchmarks/mutation.sh ["jaxseed.config*" ...]   # default: every module named
set -euo pipefail
cd "$(dirname "$0")/.."
# mutmut writes the mutated copy and its cache under mutants/ (ignored by git).
mutmut run "$@" || true  # its exit status counts survivors; the list below is the result
mutmut results
