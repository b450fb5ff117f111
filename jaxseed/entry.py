"""What every entry point (train, ablate, verify, diff) does around its own work:
JAX's start-up order, and the one mapping of errors to exit codes.

    exit 0 done; 1 verify or diff found a difference; 2 bad input (one line on
    stderr, nothing you had is changed); 3 non-finite loss; 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Callable

from jaxseed import machine, mesh
from jaxseed.config import Config
from jaxseed.errors import UserError


class Interrupted(Exception):
    """Stopped on request (a signal) after saving what can be resumed; ``args[0]`` says how to go on."""


def start_jax(config: Config, *, compilation_cache: bool, processes: tuple = (None, None, None)) -> None:
    """Everything that must happen before JAX starts its backends, in order: the XLA flags
    the config asks for (they are read once, at start), then the persistent compilation
    cache (named after those flags; off where a run must compile its own programs), then
    joining the other processes of the run."""
    machine.require_flags(config)
    if compilation_cache:
        machine.use_compilation_cache()
    else:
        machine.no_compilation_cache()
    mesh.start_processes(*processes)


def run(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit code, or the code and one stderr line of what it raised."""
    try:
        return body()
    except Interrupted as stopped:
        print(f"{prog}: {stopped.args[0]}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 3
    except OSError as error:  # a write the run folder did not make itself (a library's): still one line
        where = f" {error.filename}" if error.filename else ""
        print(f"{prog}: error: cannot write{where}: {error.strerror or error}", file=sys.stderr)
        return 2
