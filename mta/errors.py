"""Errors raised by the method core; the CLI maps them to exit codes."""


class MtaError(Exception):
    """Base class of every error the method core raises on purpose."""


class AdapterFormatError(MtaError, ValueError):
    """An adapter folder or blob is missing, garbled, pickled or holds non-finite values."""


class ShapeMismatchError(MtaError, ValueError):
    """An adapter does not fit the base model's modules."""


class UnknownNameError(MtaError, KeyError):
    """A name was looked up in a registry (method, rule, task, scheme) that does not hold it."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep ours readable on one line.
        return str(self.args[0]) if self.args else ""


class DataFormatError(MtaError, ValueError):
    """A LaMP data file or user record is malformed; the message names the user or item."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the error for an unknown registry key, listing the valid names."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


def one_line(error: BaseException, *, first_line: bool = False) -> str:
    """An exception's message as one line, or its type's name when the message is empty.

    Whitespace runs (newlines included) collapse to one space; `first_line` keeps only the
    first non-empty line instead (Ray's messages append a multi-line traceback). A
    KeyError's message loses the quotes `str()` puts around it.
    """
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(text.split()) or type(error).__name__
