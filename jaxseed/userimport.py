"""A user's object named ``package.module:NAME`` or ``path/to/file.py:NAME`` (an objective, a
training function): imported as code the user asked to run; every failure is one line."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

from jaxseed.errors import UserError, one_line


def split_name(name: str) -> tuple[str, str]:
    """("package.module" or "path/to/file.py", "NAME") of ``module:NAME``; ("", name) else."""
    module_name, _, attribute = name.rpartition(":")
    return module_name, attribute


def recorded_name(name: str) -> str:
    """``name`` as a record keeps it: a file's object by the file's name alone (where a file lies on
    this machine is no part of a run; the user names it again to use it)."""
    module_name, attribute = split_name(name)
    return f"{os.path.basename(module_name)}:{attribute}" if module_name.endswith(".py") else name


def load(name: str, what: str):
    """The object ``name`` names; UserError saying ``what`` it should be if it does not import or is absent."""
    module_name, attribute = split_name(name)
    if not module_name or not attribute.isidentifier():
        raise UserError(f"name the {what} as package.module:NAME or path/to/file.py:NAME, got {name!r}")
    module = _import(module_name, what)
    if not hasattr(module, attribute):
        raise UserError(f"{module_name} has no {attribute!r}")
    return getattr(module, attribute)


def _import(module_name: str, what: str):
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise UserError(f"no {what} file {module_name}")
            # Its own name, so it cannot replace a module already imported (``jaxseed``, ``optax``).
            key = "jaxseed_user_" + hashlib.sha256(os.path.abspath(module_name).encode()).hexdigest()[:12]
            if key not in sys.modules:
                spec = importlib.util.spec_from_file_location(key, module_name)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[key]
                    raise
            return sys.modules[key]
        return importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as error:  # the user's code: any failure to import it is bad input
        raise UserError(f"cannot import the {what} module {module_name}: {one_line(error, with_type=True)}") from None
