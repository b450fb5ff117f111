"""The one exception type the CLI turns into a single line and exit code 2, and the one way
an exception from elsewhere (a library, the OS, a user's code) becomes part of such a line."""


class UserError(Exception):
    """Bad input from the user: a flag, a seed, a data file, a workdir."""


def one_line(error: BaseException, with_type: bool = False) -> str:
    """``error``'s message as one line: its first line, at most 200 characters; its type's name
    where it has no message, and before the message ``with_type``."""
    lines = str(error).strip().splitlines()
    text = lines[0][:200] if lines else ""
    if with_type:
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text or type(error).__name__
