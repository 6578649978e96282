"""Modules that add `surge` sub-commands when agent.cli does not list them yet.

gateway/demo/cli.py and firmware_shim/host/device_cli.py register themselves
in agent.cli's command registry from their own ``main``; these tests run that
branch (the module taken out of the registry first) and check the commands
appear and the registry keeps working.
"""

from __future__ import annotations

import importlib

import pytest

from agent import cli


@pytest.mark.parametrize(
    "module, commands",
    [
        ("gateway.demo.cli", ("demo",)),
        ("firmware_shim.host.device_cli", ("flash", "device")),
    ],
)
def test_main_registers_its_commands_when_missing(
    module: str, commands: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(cli._COMMAND_MODULES, module)
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    listed = capsys.readouterr().out
    for command in (*commands, "gateway", "agent", "keys"):
        assert command in listed, (command, listed)
    assert isinstance(cli._COMMAND_MODULES, dict) and module in cli._COMMAND_MODULES
    # Registered the way agent.cli lists its own modules: a sub-command runs.
    with pytest.raises(SystemExit) as exit_:
        mod.main([commands[0], "--help"])
    assert exit_.value.code == 0
    assert "usage: surge %s" % commands[0] in capsys.readouterr().out
