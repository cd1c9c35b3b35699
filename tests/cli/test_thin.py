"""The CLI stays thin (issue 18): every command function only parses, builds a request, calls
the job and renders. Measured on the source of each click command's callback (decorators not
counted): under 40 lines, and no `raise` of a lukspack rule error (rules live in lukspack.api)."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator

import click
import pytest

from lukspack.cli import cli

MAX_LINES = 40


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + " ")
        if cmd.callback is not None:
            yield path, cmd


COMMANDS = list(_commands(cli))


def _function(cmd: click.Command) -> ast.FunctionDef:
    fn = inspect.unwrap(cmd.callback)  # type: ignore[arg-type]
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def test_every_command_is_found() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"encrypt", "verify", "decrypt", "check", "upload", "wrap-key", "publish",
            "import vpc", "import classic", "fleet run"} <= names


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_is_short(name: str, cmd: click.Command) -> None:
    node = _function(cmd)
    first = node.lineno  # the def line: decorators are the option declarations
    length = node.end_lineno - first + 1  # type: ignore[operator]
    assert length < MAX_LINES, f"{name}: {length} lines"


RULE_ERRORS = {"UsageError", "KeyFileError", "LukspackError", "BadParameter"}


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_raises_no_rule(name: str, cmd: click.Command) -> None:
    node = _function(cmd)
    raised = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Raise) and n.exc is not None:
            target = n.exc.func if isinstance(n.exc, ast.Call) else n.exc
            raised.add(ast.unparse(target).rsplit(".", 1)[-1])
    assert not raised & RULE_ERRORS, f"{name} raises {sorted(raised & RULE_ERRORS)}"
