"""Loading and writing the configuration: TOML, ``SCARLET_*`` variables and flags.

Precedence, lowest first: field defaults < TOML file (``--config``) < environment
(``SCARLET_<FIELD>``, e.g. ``SCARLET_CACHE_DURATION=25``; nested sections as
``SCARLET_<SECTION>__<FIELD>``) < command-line flags (``--cache-duration 25``).
Unknown keys are rejected everywhere, with the list of valid ones. The models
themselves live in :mod:`shared.config`; this module owns :func:`load_config`, the
flag generation, :func:`dump_toml` and :func:`redacted`.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from shared.config import FederationConfig, ServiceSettings
from shared.errors import ConfigError

__all__ = [
    "add_model_flags",
    "dump_toml",
    "flag_overrides",
    "load_config",
    "redacted",
]

ENV_PREFIX = "SCARLET_"
TABLES = ("service",)  # the TOML tables some loader reads (section=...)
M = TypeVar("M", bound=BaseModel)


def load_config(
    model: type[M],
    *,
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    section: str | None = None,
) -> M:
    """Build ``model`` from defaults < TOML ``path`` < ``env`` < ``overrides``.

    Args:
        model: the pydantic settings class.
        path: optional TOML file; with ``section`` only that table is read.
        env: environment (default ``os.environ``); only ``SCARLET_*`` keys are used.
        overrides: values from command-line flags (already typed or strings).
        section: TOML table holding this model's keys (None: the top level).

    Raises:
        ConfigError: unreadable file, unknown key or invalid value, with the key named.
    """
    data: dict[str, object] = {}
    if path is not None:
        data.update(_read_toml(Path(path), section))
    data.update(_from_env(model, os.environ if env is None else env))
    data.update(overrides or {})
    unknown = sorted(set(data) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {unknown}; valid keys: {sorted(model.model_fields)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _read_toml(path: Path, section: str | None) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if section is None:
        # a table the loaders do not read would be ignored silently: refuse it instead
        stray = sorted(k for k, v in doc.items() if isinstance(v, dict) and k not in TABLES)
        if stray:
            raise ConfigError(
                f"config file {path}: unknown table(s) {['[' + k + ']' for k in stray]}; "
                "federation keys go at the top level, service keys under [service]"
            )
        return {k: v for k, v in doc.items() if not isinstance(v, dict)}
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return dict(table)


def _from_env(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, object]:
    # Strings are handed to pydantic, which parses numbers and booleans itself.
    found: dict[str, object] = {}
    for name in model.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            found[name] = env[key]
    return found


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one ``--kebab-case`` flag per field of ``model``, defaulting to "not given"."""
    group = parser.add_argument_group(f"{model.__name__} (also TOML keys / SCARLET_* vars)")
    for name, field in model.model_fields.items():
        kind = _flag_type(field.annotation)
        default = field.default
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            # argparse %-formats help text: a literal % (the %2F of a broker URL) must be %%
            help=f"{field.description or ''} (default: {default})".replace("%", "%%"),
        )


def flag_overrides(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, object]:
    """The fields of ``model`` that were given on the command line."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}


def _flag_type(annotation: Any) -> Any:
    # Optional[X] and Literal[...] flags arrive as strings; pydantic validates them later.
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Literal):
        return str
    if annotation is bool:
        return _parse_bool
    return annotation if annotation in (int, float, str) else str


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def redacted(
    values: Mapping[str, object], secrets: Sequence[str] = ("password", "url")
) -> dict[str, object]:
    """A copy of ``values`` with credentials in URLs and password fields masked."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, str) and any(s in key for s in secrets) and "@" in value:
            scheme, _, rest = value.partition("://")
            out[key] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        elif "password" in key and value:
            out[key] = "***"
        else:
            out[key] = value
    return out


def dump_toml(config: FederationConfig, settings: ServiceSettings) -> str:
    """A TOML file that :func:`load_config` reads back into the same two objects.

    Federation keys go at the top level, service keys under ``[service]``; None values are
    left out (they are the defaults).
    """

    def lines(values: Mapping[str, object]) -> list[str]:
        out = []
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            out.append(f"{key} = {text}")
        return out

    body = lines(config.model_dump()) + ["", "[service]"] + lines(settings.model_dump())
    return "\n".join(body) + "\n"
