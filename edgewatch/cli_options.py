"""CLI options generated from the settings models: each setting is declared once, in :mod:`edgewatch.config`.

:func:`settings_command` turns a function ``command(settings, **other_options)`` into a typer
command whose options are the model's fields (``in_topic`` → ``--in-topic``; a field may name
its option with ``json_schema_extra={"cli": "--model"}``) plus the function's own parameters.
An option left out falls back to the environment, then to the model's default, which the help
shows. Secrets (``SecretStr`` fields) get no option: they come from the environment or a
secrets file, never from a command line that ``ps`` shows to every local user.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings


def build_settings(model: type[BaseSettings], **given):
    """Settings from the given values, the environment and the defaults, in that order; a
    validation problem becomes one line naming the option."""
    try:
        return model(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"--{_option_of(exc_item['loc'])}: {exc_item['msg']}" for exc_item in exc.errors())
        raise typer.BadParameter(problems) from None


def _option_of(loc: tuple) -> str:
    return ".".join(map(str, loc)).replace("_", "-") if loc else "settings"


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_secret(annotation) -> bool:
    return _unwrap_optional(annotation) is SecretStr


def _cli_type(annotation) -> tuple[type, str]:
    """The type typer parses for a field, and a hint for the help (a Literal's choices)."""
    base = _unwrap_optional(annotation)
    if typing.get_origin(base) is Literal:
        return str, " | ".join(map(str, typing.get_args(base)))
    if base in (str, int, float, bool, Path):
        return base, ""
    return str, ""


def setting_parameters(
    model: type[BaseSettings], only: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> list[inspect.Parameter]:
    """One keyword-only typer parameter per (non-secret) field of ``model``."""
    wanted = set(only) if only is not None else None
    parameters = []
    for name, field in model.model_fields.items():
        if (wanted is not None and name not in wanted) or name in exclude or _is_secret(field.annotation):
            continue
        kind, choices = _cli_type(field.annotation)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = str(extra.get("cli") or f"--{name.replace('_', '-')}")
        description = (field.description or "").strip()
        if choices and choices not in description:
            description = f"{description} ({choices})" if description else choices
        default = field.get_default()
        # no square brackets: typer's rich help would read them as markup
        shown = "" if default is None or "(default" in description else f"default: {_shown(default)}; "
        help_text = f"{description} ({shown}env EDGEWATCH_{name.upper()})"
        if kind is bool:
            option = typer.Option(f"{flag}/{flag.replace('--', '--no-', 1)}", help=help_text, show_default=False)
        else:
            option = typer.Option(flag, help=help_text, show_default=False)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return parameters


def _shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def settings_command(
    model: type[BaseSettings], only: Iterable[str] | None = None, exclude: Iterable[str] = (), **fixed
) -> Callable[[Callable], Callable]:
    """Decorate ``command(settings, **own_options)``: typer sees its own options plus the model's.

    ``fixed`` values are set on every settings object the command gets (e.g. ``iothub=True``).
    """
    only = list(only) if only is not None else None

    def decorate(command: Callable) -> Callable:
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "settings"]
        own_names = {p.name for p in own}
        fields = [p for p in setting_parameters(model, only, [*exclude, *fixed]) if p.name not in own_names]
        field_names = {p.name for p in fields}

        @functools.wraps(command)
        def wrapper(**options):
            given = {name: options.pop(name) for name in list(options) if name in field_names}
            return command(build_settings(model, **given, **fixed), **options)

        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        wrapper.__signature__ = inspect.Signature([*keyword, *fields])
        # typer must read the generated signature, not the function's own annotations
        del wrapper.__wrapped__
        wrapper.__annotations__ = {}
        return wrapper

    return decorate
