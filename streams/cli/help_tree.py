"""The command tree and exit codes at the end of ``streams --help``."""

from __future__ import annotations

import types

import click


def command_tree(group: click.Group, ctx: click.Context, prefix: str = "") -> list[tuple[str, str]]:
    """(``path``, one-line help) of every command under ``group``, depth first."""
    rows = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            rows.append((path, cmd.get_short_help_str(45)))
            rows.extend(command_tree(cmd, ctx, path + " "))
        else:
            rows.append((path, cmd.get_short_help_str(45)))
    return rows


def install(group: click.Group) -> None:
    """Make ``group --help`` end with the whole command tree and the exit codes."""

    def format_epilog(self: click.Group, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Command tree"):
            formatter.write_dl(command_tree(self, ctx))
        with formatter.section("Exit codes"):
            formatter.write_dl([("0", "ok"), ("1", "the command failed (the reason is on stderr)"),
                                ("2", "bad usage or invalid settings (names the option or STREAMS_* variable)")])

    group.format_epilog = types.MethodType(format_epilog, group)  # type: ignore[method-assign]  # one group's epilog
