"""The agent's MQTT session (portable): connect, replay, loss, clean stop.

protocol §2.2: on every connect the last will, the subscriptions, the birth
and the retained "online"; then the outbox is replayed oldest first, and a
report leaves it only after its PUBACK.  A lost connection is retried with
exponential backoff and jitter up to a cap.  Functions of the agent
(agent.runner.Agent), in a module of their own so that neither half needs
more heap than a 64 KB board has to compile as .py.
"""

import gc
import os

from agent import clock, reason


def connect(agent):
    cfg = agent.cfg
    try:
        # Signed first, before anything else of the connection is allocated:
        # signing is the peak of a board's heap.
        birth = agent.birth()
        # protocol §2.2: will, subscriptions, birth, then "online".
        agent.link.connect(agent.topic("status"), (agent.topic("cmd"), agent.topic("receipt")),
                           ((agent.topic("birth"), birth), (agent.topic("status"), b"online")))
        birth = None
    except Exception as exc:
        # Half fixed, half random (here and in lost()), so a fleet that lost
        # its broker does not reconnect in lockstep.
        delay = agent.backoff * (0.5 + os.urandom(1)[0] / 510)
        agent.backoff = min(cfg.get("reconnect.max_s"), agent.backoff * 2)
        agent.next_connect = clock.ms() + int(delay * 1000)
        agent.log("broker %s:%d unreachable (%s); %d reports queued; retry in %.1f s" % (
            cfg.get("broker.host"), cfg.get("broker.port"), reason(exc),
            len(agent.outbox), delay))
        return False
    agent.backoff = cfg.get("reconnect.min_s")
    if cfg.get("hass"):  # Home Assistant discovery, opt-in; CPython only (agent/hass.py)
        try:
            from agent import hass
            hass.attach(agent)
        except Exception as exc:
            agent.log("home assistant discovery failed: %s" % reason(exc))
    agent.log("connected to %s:%d as surge-%s; %d reports to replay" % (
        cfg.get("broker.host"), cfg.get("broker.port"), agent.device, len(agent.outbox)))
    return True


def lost(agent, exc):
    agent.link.close(False)
    delay = agent.cfg.get("reconnect.min_s") * (0.5 + os.urandom(1)[0] / 510)
    agent.next_connect = clock.ms() + int(delay * 1000)
    agent.log("connection lost (%s); %d reports queued" % (reason(exc), len(agent.outbox)))


def flush(agent):
    """Publish queued reports oldest first; each leaves only after its PUBACK."""
    if getattr(agent, "audit_out", None) and not send_audit(agent):
        return
    topic = agent.topic("report")
    while agent.link.connected:
        try:
            item = agent.outbox.oldest()
        except MemoryError:
            gc.collect()  # it stays queued; the next pass tries again
            return
        if item is None:
            return
        try:
            agent.link.publish(topic, item[1], 1)
        except Exception as exc:
            lost(agent, exc)
            return
        agent.outbox.remove(item[0])


def storage_command(agent, msg):
    # Here rather than in agent.runner, which a board compiling .py barely has
    # the heap to compile.  agent.storage_proof stays loaded while commands
    # come (a plot arrives as a burst of them); agent.cycle unloads it before
    # signing, whose peak needs its RAM on a 48 KB board.
    try:
        from agent import storage_proof
        storage_proof.handle(agent, msg)
    except Exception as exc:  # MemoryError on a full board heap among them
        agent.log("bad storage command: %s" % reason(exc))
    storage_proof = None
    gc.collect()


def send_audit(agent):
    """Publish the storage proof replies agent.storage_proof queued, oldest
    first (QoS 1); False when the connection was lost."""
    q = agent.audit_out
    while q:
        try:
            agent.link.publish(agent.topic("audit"), q[0], 1)
        except Exception as exc:
            lost(agent, exc)
            return False
        q.pop(0)
    return True


def stop(agent):
    if agent.link.connected:
        # A clean DISCONNECT suppresses the will, so say "offline" ourselves.
        try:
            agent.link.publish(agent.topic("status"), b"offline", 1, True)
        except Exception:
            pass
    agent.link.close(True)
    agent.log("stopped after %d reports" % agent.made)
