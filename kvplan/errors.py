"""kvplan's exception tree. Anything raised as a `KvplanError` reaches the user as one line."""

from __future__ import annotations


class KvplanError(Exception):
    """Base of every error kvplan reports to a user (CLI exit code 2, HTTP 4xx)."""


class InputError(KvplanError):
    """The user's input (flag, file, request) is invalid; the message says what and where."""


class PlanError(InputError):
    """A pool plan file is malformed; the message names the field and the line."""


class NotFound(InputError):
    """A named thing (model, GPU, format, bucket) does not exist; the message lists close names."""


class Unsupported(InputError):
    """kvplan cannot model this input (a layer type, config field, quantization method): the message
    names it and what to pass to proceed at the user's risk. Never a guess in its place."""


def closest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """`did you mean a, b?` suffix for an unknown name (empty when nothing is close)."""
    import difflib

    near = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=n, cutoff=0.5)
    lookup = {c.lower(): c for c in choices}
    return f"; did you mean {', '.join(lookup[m] for m in near)}?" if near else ""
