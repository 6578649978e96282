"""Fault suite (bounded for CI): each scenario of tests/faults_lib.py a few
times; `make soak` runs the same scenarios many more times (bench/soak.py).

- gateway kill -9 at random moments under load, hardhat chain outliving it;
- broker SIGKILL and restart under load from real `surge agent run` agents;
- agent kill -9 while it writes its outbox;
- gateway database on a disk that fills up (a size-limited tmpfs as root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import Mosquitto
from faults_lib import (
    Figures,
    agent_power_cuts,
    broker_kills_with_agents,
    can_mount_tmpfs,
    gateway_disk_full,
    gateway_page_limit,
    gateway_random_kills,
)
from gw_process import HardhatNode

KILLS = int(os.environ.get("SURGE_FAULT_KILLS", "10"))


# A block every 0.2 s: the gateway under test waits for K confirmations.
pytestmark = pytest.mark.usefixtures("miner")


def no_loss(fig: Figures) -> None:
    print(fig.as_dict())
    assert fig.lost == 0 and fig.duplicated == 0, fig.as_dict()


@pytest.mark.timeout(240)
def test_gateway_kill9_at_random_moments(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    fig = gateway_random_kills(tmp_path, broker, node, kills=KILLS, seed=11)
    no_loss(fig)
    assert fig.faults_injected == KILLS
    assert fig.reports_sent > 100 and fig.reports_anchored == fig.reports_sent == fig.reports_stored


@pytest.mark.timeout(240)
def test_broker_kill9_under_agent_load(tmp_path: Path, broker: Mosquitto) -> None:
    fig = broker_kills_with_agents(tmp_path, broker, kills=3, agents=3, reports=30, seed=12)
    no_loss(fig)
    assert fig.reports_stored == fig.reports_sent == 90
    assert fig.notes["gaps"] == 0 and fig.notes["out_of_order"] == 0


@pytest.mark.timeout(240)
def test_agent_power_cut_during_outbox_writes(tmp_path: Path, broker: Mosquitto) -> None:
    fig = agent_power_cuts(tmp_path, broker, cuts=12, seed=13)
    no_loss(fig)
    assert fig.faults_injected == 12 and fig.reports_sent > 12


@pytest.mark.timeout(180)
def test_gateway_disk_full(tmp_path: Path, broker: Mosquitto) -> None:
    """As root: a real full filesystem (tmpfs). Otherwise (or with SURGE_FAULT_DISK=pages)
    the fallback: SQLite's max_page_count caps the database; the test output says which ran."""
    if can_mount_tmpfs() and os.environ.get("SURGE_FAULT_DISK") != "pages":
        fig = gateway_disk_full(tmp_path, broker)
    else:
        fig = gateway_page_limit(tmp_path, broker)
    no_loss(fig)
    assert fig.reports_stored == fig.reports_sent
