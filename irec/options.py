"""Command-line options with environment twins, made from the config dataclasses.

Every option `--name` of command CMD has the twin IREC_<CMD>_<NAME>, read when the
command's parser is built, never at import. A config dataclass whose fields carry option
metadata (`server.config.option`, or the same keys as a plain dict) is the one source of
its options: flag, help, type, choices and default come from the field, and the parsed
options become the config again with :func:`from_args`, without a field-by-field copy.

A command's options are added when its parser is first used (:class:`CommandParser`),
so `irec serve` never imports the training code that `irec train`'s options come from.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")
# Actions of options that take no value: their env twin reads 1/true/yes/on.
SWITCHES = ("store_true", argparse.BooleanOptionalAction)
Parse = Callable[[str], Any]


class MissingModule(Exception):
    """A command's options could not be made: a module they come from is not installed."""

    def __init__(self, command: str, error: ModuleNotFoundError) -> None:
        super().__init__(f"{command}: {error}")
        self.command = command
        self.error = error


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose options are added on first use (parsing, help or usage)."""

    def __init__(
        self, *args: Any, options: Callable[[CommandParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._options = options

    @property
    def command(self) -> str:
        """The command's name (the last word of `irec NAME`)."""
        return self.prog.split()[-1]

    def define(self) -> None:
        """Add the options now (once); a missing module raises MissingModule."""
        options, self._options = self._options, None
        if options is None:
            return
        try:
            options(self)
        except ModuleNotFoundError as exc:
            raise MissingModule(self.command, exc) from exc

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Define the options, then parse as usual."""
        self.define()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """Define the options, then format the help as usual."""
        self.define()
        return super().format_help()

    def format_usage(self) -> str:
        """Define the options, then format the usage as usual."""
        self.define()
        return super().format_usage()


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
            if kwargs.get("action") in SWITCHES:
                default = raw.lower() in ("1", "true", "yes", "on")
            else:
                convert: Parse = kwargs.get("type", str)
                default = convert(raw)
            kwargs["required"] = False
        shown = (
            ""
            if default is None or kwargs.get("action") in SWITCHES
            else f" (default: {default.value if isinstance(default, enum.Enum) else default})"
        )
        self.parser.add_argument(
            *flags, default=default, help=f"{help}{shown} [env: {env}]", **kwargs
        )

    def add_fields(
        self,
        config: type,
        *,
        dest_prefix: str = "",
        defaults: Any = None,
        parsers: Mapping[str, Parse] | None = None,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
        exclude: Collection[str] = (),
    ) -> None:
        """One option per field of the dataclass `config` that carries option metadata.

        The option's dest is `dest_prefix` + the field's name. Its default is the field's,
        or the attribute of `defaults` (an instance of `config` that another config holds
        by default). `parsers` read values the field's type cannot (e.g. "auto" → None);
        `metadata` stands in for the field metadata of a class that carries none.
        """
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            meta = f.metadata if metadata is None else metadata.get(f.name, {})
            if "help" not in meta or f.name in exclude:
                continue
            kwargs: dict[str, Any] = {"dest": dest_prefix + f.name}
            kind = _option_type(hints[f.name])
            if defaults is not None:
                kwargs["default"] = getattr(defaults, f.name)
            elif f.default is not dataclasses.MISSING:
                kwargs["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kwargs["default"] = f.default_factory()
            else:
                kwargs["required"] = True
            if kind is bool:
                # A switch that is on by default also gets its --no- form.
                on = kwargs.get("default") is True
                kwargs["action"] = argparse.BooleanOptionalAction if on else "store_true"
            else:
                kwargs["type"] = (parsers or {}).get(f.name, kind)
            if meta.get("choices"):
                kwargs["choices"] = list(meta["choices"])
            flags = [meta.get("flag") or "--" + f.name.replace("_", "-")]
            if kind is not bool and not meta.get("choices"):
                kwargs["metavar"] = flags[0][2:].replace("-", "_").upper()
            if meta.get("short"):
                flags.insert(0, meta["short"])
            self.add(*flags, help=meta["help"], **kwargs)


def from_args(config: type[C], args: argparse.Namespace, dest_prefix: str = "", **values: Any) -> C:
    """The dataclass `config` from the parsed options of its fields, and `values`.

    A field takes the option whose dest is `dest_prefix` + its name when the command has
    one, else `values`' entry, else its own default.
    """
    parsed = vars(args)
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        if dest_prefix + f.name in parsed:
            values.setdefault(f.name, parsed[dest_prefix + f.name])
    return config(**values)


def default_of(config: type, name: str) -> Any:
    """The default of field `name` of the dataclass `config` (its factory called)."""
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _option_type(hint: Any) -> Any:
    """The type an option parses to: Optional[X] → X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (kind,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return kind
    return hint
