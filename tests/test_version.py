"""The version has one source: agent/__init__.py, read by pyproject.toml (CHANGELOG.md)."""

from __future__ import annotations

import importlib.metadata

import agent


def test_installed_version_is_the_agents() -> None:
    assert importlib.metadata.version("depin-surge") == agent.VERSION
