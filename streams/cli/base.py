"""What every ``streams`` subcommand shares: consoles, the settings context, failing with an exit code, loading an app."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from rich.console import Console

from streams.dev.process import ServiceError
from streams.settings import Settings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class Context:
    """Lazily built settings shared by subcommands."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    sys.exit(code)


class StreamsGroup(click.Group):
    """Turns the framework's expected errors into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            fail(str(exc), 2)
        except ServiceError as exc:
            fail(str(exc), 1)


def load_object(path: str, kind: type, what: str, default_attr: str) -> Any:
    """Import ``module:attribute`` (``attribute`` defaults to ``default_attr``) and return it if it is a
    ``kind``; a :class:`ServiceError` naming ``what`` otherwise."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceError(f"cannot import the {what} module {module_name!r}: {exc}") from None
    obj = getattr(module, attr or default_attr, None)
    if not isinstance(obj, kind):
        raise ServiceError(f"{path!r} is not a {kind.__name__} (got {type(obj).__name__})")
    return obj


def load_app(path: str):
    """Import ``module:attribute`` and return the StreamsApp it names."""
    from streams.app import StreamsApp

    return load_object(path, StreamsApp, "app", "app")
