"""One report cycle: measure, sign, queue (portable).

The run loop (agent.runner) owns the connection and the timing; this module
makes one report.  It is a module of its own because MicroPython compiles a
.py module in one piece: run loop and report cycle in one file needed ~40 KB
of heap just to compile on a 64 KB board.

On a board the measuring code (agent.probes, agent.bwprobe) is loaded for
each report and unloaded before signing when it comes from .mpy, which is
quick to load again (both in ~0.06 ms on the unix port, more from a board's
flash): the ~3.5 KB it frees is what signing and the connection (birth) need
on a 48 KB heap.  Compiled from .py it stays, since compiling it again would
need several times the heap it frees.
"""

import gc

from agent import clock, reason, report, session, unload


def make_report(agent):
    """Measure, sign, store one report in the outbox; save the state after it."""
    st = agent.state
    seq = st.seq + 1
    errors = {}
    claims = _claims(agent, seq, errors)
    # Only the claims are live now (the measurements died with _claims): signing
    # is the peak of the cycle.
    gc.collect()
    data = report.sign_report(agent.secret, agent.public, claims)
    claims = None
    gc.collect()
    dropped = agent.outbox.put(seq, data)
    st.seq = seq
    st.prev = report.prev_hash(data)
    st.dropped = dropped
    st.save()
    agent.made += 1
    agent.log("report seq %d: %d bytes, %d queued%s%s" % (
        seq, len(data), len(agent.outbox),
        ", dropped %d oldest (outbox full)" % dropped if dropped else "",
        ", errors: %s" % ",".join(errors) if errors else ""))


def _claims(agent, seq, errors):
    # Separate from make_report also because MicroPython compiles a function's
    # bytecode into one block: two halves fit a fragmented heap where one
    # function of twice the size would not.
    unload("agent.storage_proof")  # loaded by storage commands (agent.runner): not needed to sign
    gc.collect()
    from agent import probes
    cfg = agent.cfg
    st = agent.state
    storage = probes.storage(cfg.get("mounts"), errors)
    iface = cfg.get("net_interface")
    net = probes.net(iface, errors)
    rssi, mbps = probes.link(iface, errors)
    # From .mpy: unloaded again (see the top); the name must let go of it too.
    drop = getattr(probes, "__file__", "").endswith(".mpy")
    probes = None
    if drop:
        unload("agent.probes")
    bw = None
    size = cfg.get("bw_probe_bytes")
    if size:
        if agent.link.connected:
            from agent import bwprobe
            try:
                bw = (bwprobe.run(agent.link, agent.topic("probe"), seq, size), None)
            except Exception as exc:
                errors["bw"] = reason(exc)
                session.lost(agent, exc)
            bwprobe = None
            if drop:
                unload("agent.bwprobe")
        else:
            errors["bw"] = "not connected"
    gc.collect()
    if not agent.synced and clock.try_ntp(agent.log):
        agent.log("clock set by ntp")
    iat = clock.synced_time()
    agent.synced = iat is not None
    claims = report.build_claims(
        seq, st.boot, clock.uptime(), max(1, int(agent.interval + 0.5)), iat, st.prev,
        storage, net, bw, rssi, mbps, st.dropped, errors or None, agent.nonce)
    agent.nonce = None
    return claims
