"""Token counts as users type them (`8k`, `32K`, `131072`); kept apart from `traffic` so that
`kvplan size` parses `--max-model-len` without loading the traffic readers."""

from kvplan.errors import InputError


def parse_tokens(text: str, what: str = "token count") -> int:
    """`8k` -> 8192, `32K` -> 32768, `1m` -> 1048576, `4096` -> 4096."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise InputError(f"bad {what} {text!r}: use a number like 8192 or 8k") from None
    if value <= 0 or value != int(value):
        raise InputError(f"bad {what} {text!r}: must be a positive whole number of tokens")
    return int(value)
