"""Command-line options with environment twins, and options made from config dataclasses.

Every option `--name` of command CMD has the twin IREC_<CMD>_<NAME>, read when the
parser is built in main(), never at import. A config dataclass whose fields carry
`option(...)` metadata (server.config) is the one source of its options: flag, help,
type, choices and default come from the field, and the parsed options become the config
again with :func:`from_args`, without a field-by-field copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

C = TypeVar("C")


class EnvArgs:
    """Adds options whose defaults come from IREC_<PREFIX>_<NAME> environment variables."""

    def __init__(self, parser: argparse.ArgumentParser, prefix: str) -> None:
        self.parser = parser
        self.prefix = prefix

    def add(self, *flags: str, help: str, default: Any = None, **kwargs: Any) -> None:  # noqa: A002
        """Like add_argument; the env twin overrides `default` and satisfies `required`."""
        long = next(f for f in flags if f.startswith("--"))
        env = f"IREC_{self.prefix}_{long[2:].replace('-', '_').upper()}"
        raw = os.environ.get(env)
        if raw is not None:
            if kwargs.get("action") == "store_true":
                default = raw.lower() in ("1", "true", "yes", "on")
            else:
                convert: Callable[[str], Any] = kwargs.get("type", str)
                default = convert(raw)
            kwargs["required"] = False
        shown = (
            ""
            if default is None or kwargs.get("action") == "store_true"
            else f" (default: {default})"
        )
        self.parser.add_argument(
            *flags, default=default, help=f"{help}{shown} [env: {env}]", **kwargs
        )

    def add_fields(self, config: type) -> None:
        """One option per field of the dataclass `config` that carries option metadata."""
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if "help" not in f.metadata:
                continue
            kwargs: dict[str, Any] = {"dest": f.name}
            kind = _option_type(hints[f.name])
            if kind is bool:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs["required"] = True
            elif f.default is not dataclasses.MISSING:
                kwargs["default"] = f.default
            flags = [f.metadata.get("flag") or "--" + f.name.replace("_", "-")]
            if kind is not bool and not f.metadata.get("choices"):
                kwargs["metavar"] = flags[0][2:].replace("-", "_").upper()
            if f.metadata.get("short"):
                flags.insert(0, f.metadata["short"])
            self.add(*flags, help=f.metadata["help"], **kwargs)


def from_args(config: type[C], args: argparse.Namespace, **values: Any) -> C:
    """The dataclass `config` from the parsed options of its fields (and `values`)."""
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        if "help" in f.metadata:
            values.setdefault(f.name, getattr(args, f.name))
    return config(**values)


def _option_type(hint: Any) -> Any:
    """The type an option parses to: Optional[X] → X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (kind,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return kind
    return hint
