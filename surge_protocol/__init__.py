"""The Surge v1 wire protocol: claim keys, topic tree, identities, Merkle batching.

CONSENSUS-CRITICAL.  Everything in this package defines bytes and names that
devices, gateways and offline verifiers must agree on: a change here changes
what every device sends and what every verifier accepts, including receipts
issued years ago.  Treat it as a wire format, not as ordinary code: a change
that alters an output is a protocol change (new topic version, new vectors in
tests/vectors/, an entry in docs/protocol.md), never a refactor.

The normative description is docs/protocol.md; the modules here are its one
implementation, shared by the agent, the firmware bundle and the gateway.
``topics`` and ``ids`` ship to boards and stay inside MicroPython's subset;
``claims`` is portable too (the device's agent/report.py repeats its numbers
as const(), checked against it on both runtimes); ``merkle`` is host-only
(typed CPython).
"""
