"""The one exception type the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a flag, a seed, a data file, a workdir."""
