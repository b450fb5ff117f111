"""jaxseed.errors.one_line: any exception as part of one line."""

from jaxseed.errors import one_line


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(ValueError("  \n")) == "ValueError"  # no message: never an IndexError
    assert one_line(KeyError()) == "KeyError"
    assert one_line(OSError("x" * 300)) == "x" * 200
    assert one_line(ValueError("bad\nmore"), with_type=True) == "ValueError: bad"
    assert one_line(RuntimeError(), with_type=True) == "RuntimeError"
