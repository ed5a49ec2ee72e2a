"""Deterministic YAML text for generated files: block style, key order kept, multi-line strings
(PromQL, an embedded plan or dashboard) as literal blocks so diffs stay readable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def dump_all(docs: Sequence[Any]) -> str:
    return "---\n".join(dump(d) for d in docs)
