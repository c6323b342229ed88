"""How commands describe themselves in ``--help``, the way click-based tools do: flags without a
type (``--json``, not ``--json <bool>``) and arguments in capitals (``gamectl kick USER``, not
``{user}``), in usage lines, help panels and usage errors alike.

Typer builds the parameters; the command classes here only adjust how they are shown. Every
command and group of ``gamectl`` is made with them (:func:`group`, and ``cls=Command``).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _plain(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # a flag takes no value: nothing to show after it
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()
    return params


def _usage(command: Any, ctx: Any) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = param.metavar or (param.name or "").upper()
            name += "..." if param.nargs != 1 else ""
            pieces.append(name if param.required else f"[{name}]")
    return pieces


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(self, ctx)


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*_usage(self, ctx), self.subcommand_metavar]


def group(**kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` whose group and commands use the classes above."""
    app = typer.Typer(cls=Group, **kwargs)
    plain_command = app.command

    def command(*args: Any, **kw: Any) -> Any:
        kw.setdefault("cls", Command)
        return plain_command(*args, **kw)

    app.command = command  # type: ignore[method-assign]
    return app
