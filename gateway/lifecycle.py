"""Every state a batch, a reward epoch and their anchoring attempts can be in, and every move between them.

Everything that affects these state machines lives here (the stages only ask
for a move; the store refuses one this table does not list, naming both
states), so the lifecycle can be read in one place and checked against
docs/protocol.md §7 and §11 and docs/reliability.md.  The values are the
strings stored in the database: they are part of the schema.

An *anchor* is one attempt to put a root on chain (a batch's in ``anchors``,
an epoch's in ``reward_anchors``)::

    submitting --> submitted --> mined --> confirmed
         \\              \\          \\          \\
          +--------------+----------+----------+--> dropped

``submitting`` is written before the transaction is sent, so a crash leaves
a record that says a send may have happened.  ``mined`` may move to
``mined`` again (the same transaction in another block after a shallow
reorg), ``submitted`` to ``submitted`` (the transaction found on chain after a
crash).  ``dropped`` is final: the next attempt is a new anchor.  A
confirmed anchor is dropped when its block leaves the canonical chain.

A *batch* follows its live (not dropped) anchor, and goes one step further
once every receipt has reached the broker::

    closed --> anchoring --> confirmed --> receipted
       ^            |             |            |
       +------------+-------------+------------+   (its anchor dropped, or a reorg)

A *reward epoch* is ``closed`` or ``confirmed`` the same way (it has no
receipts).
"""

from __future__ import annotations

from typing import Final

SUBMITTING: Final = "submitting"
SUBMITTED: Final = "submitted"
MINED: Final = "mined"
CONFIRMED: Final = "confirmed"
DROPPED: Final = "dropped"
CLOSED: Final = "closed"
ANCHORING: Final = "anchoring"
RECEIPTED: Final = "receipted"

ANCHOR_MOVES: Final[dict[str, frozenset[str]]] = {
    SUBMITTING: frozenset({SUBMITTED, DROPPED}),
    SUBMITTED: frozenset({SUBMITTED, MINED, CONFIRMED, DROPPED}),
    MINED: frozenset({MINED, CONFIRMED, DROPPED}),
    CONFIRMED: frozenset({DROPPED}),
    DROPPED: frozenset(),
}

BATCH_MOVES: Final[dict[str, frozenset[str]]] = {
    CLOSED: frozenset({ANCHORING}),
    ANCHORING: frozenset({ANCHORING, CONFIRMED, CLOSED}),
    CONFIRMED: frozenset({RECEIPTED, CLOSED}),
    RECEIPTED: frozenset({CLOSED}),
}


class LifecycleError(RuntimeError):
    """A move the lifecycle does not have: a bug in a stage, never bad input."""


def check_anchor_move(current: str, new: str) -> None:
    if new not in ANCHOR_MOVES.get(current, frozenset()):
        raise LifecycleError("an anchor cannot go from %r to %r (gateway/lifecycle.py)" % (current, new))


def check_batch_move(current: str, new: str) -> None:
    if current != new and new not in BATCH_MOVES.get(current, frozenset()):
        raise LifecycleError("a batch cannot go from %r to %r (gateway/lifecycle.py)" % (current, new))


def anchored_state(anchor: str) -> str:
    """The state of a batch or an epoch whose live anchor is now ``anchor``."""
    if anchor == CONFIRMED:
        return CONFIRMED
    return CLOSED if anchor == DROPPED else ANCHORING


def epoch_state(anchor: str) -> str:
    """The state of a reward epoch whose latest anchor is now ``anchor``."""
    return CONFIRMED if anchor == CONFIRMED else CLOSED
