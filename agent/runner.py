"""The agent's main loop (portable): measure, sign, queue, deliver.

Order of durable writes, so a power cut at any point loses nothing:
the boot counter is saved before anything else; a report goes to the
outbox before the state file records its seq and hash; at start the
newest outbox file wins over a state file that lags behind it.  A report
leaves the outbox only after its PUBACK.
"""

import gc
import os

from agent import VERSION, clock, fsutil, probes, report
from agent.outbox import Outbox
from agent.state import State

SWNAME = "surge-agent"


def _jitter(seconds):
    # Half fixed, half random, so a fleet that lost its broker does not
    # reconnect in lockstep.
    return seconds * (0.5 + os.urandom(1)[0] / 510)


class Agent:
    def __init__(self, cfg, secret, public, link, runtime, log=print, caps=None):
        self.cfg = cfg
        self.secret = secret
        self.public = public
        self.link = link
        self.runtime = runtime
        self.log = log
        self.caps = caps or probes.caps()
        self.device = report.device_id(public)
        fsutil.makedirs(cfg.path("state_dir"))
        self.state = State(fsutil.join(cfg.path("state_dir"), "state.json"))
        self.state.load()
        self.outbox = Outbox(cfg.path("outbox.dir"), cfg.get("outbox.max_entries"))
        newest = self.outbox.newest()
        if newest is not None and newest[0] > self.state.seq:
            # Killed between writing a report and saving the state: the
            # report already carried the dropped count.
            self.state.seq = newest[0]
            self.state.prev = report.prev_hash(newest[1])
            self.state.dropped = 0
        self.state.boot += 1
        self.state.save()
        self.interval = self.state.interval or cfg.get("interval")
        self.backoff = cfg.get("reconnect.min_s")
        self.next_connect = 0
        self.report_now = False
        self.nonce = None
        self.next_report = 0
        self.made = 0
        self.receipts = 0
        self.synced = clock.synced_time() is not None
        link.on_message = self._on_message
        log("surge-agent %s: device %s, boot %d, next seq %d, %d queued" % (
            VERSION, self.device, self.state.boot, self.state.seq + 1, len(self.outbox)))

    def topic(self, kind):
        return "surge/v1/%s/%s/%s" % (self.cfg.get("fleet"), self.device, kind)

    # -- messages ------------------------------------------------------------

    def birth(self):
        claims = report.build_birth(self.cfg.get("board"), SWNAME, VERSION, self.state.boot,
                                    self.public, self.caps, self.runtime, clock.synced_time())
        gc.collect()
        return report.sign_report(self.secret, self.public, claims)

    def _on_message(self, topic, msg):
        if topic.endswith("/receipt"):
            self.receipts += 1
            return
        if not topic.endswith("/cmd"):
            return
        # protocol §2.4: a JSON object; unknown commands and members are ignored.
        try:
            import json
            doc = json.loads(bytes(msg).decode())
            name = doc.get("cmd")
            arg = doc.get("interval")
            if name == "report-now":
                self.report_now = True
                nonce = doc.get("nonce")
                if nonce is not None:
                    import binascii
                    nonce = binascii.unhexlify(nonce)
                    if 8 <= len(nonce) <= 64:
                        self.nonce = nonce
            elif (name == "set-interval" and isinstance(arg, int) and not isinstance(arg, bool)
                  and 30 <= arg <= 86400):
                self.interval = arg
                self.next_report = min(self.next_report, clock.ms() + int(arg * 1000))
                self.state.interval = arg
                self.state.save()
                self.log("interval set to %s s by command" % arg)
            else:
                self.log("ignored command %r" % (name,))
        except Exception as exc:
            self.log("bad command: %s" % probes.reason(exc))

    # -- one report ------------------------------------------------------------

    def cycle(self):
        gc.collect()
        st = self.state
        seq = st.seq + 1
        errors = {}
        storage = probes.storage(self.cfg.get("mounts"), errors)
        iface = self.cfg.get("net_interface")
        net = probes.net(iface, errors)
        rssi, mbps = probes.link(iface, errors)
        bw = None
        size = self.cfg.get("bw_probe_bytes")
        if size:
            if self.link.connected:
                from agent import bwprobe
                try:
                    bw = (bwprobe.run(self.link, self.topic("probe"), seq, size), None)
                except Exception as exc:
                    errors["bw"] = probes.reason(exc)
                    self._lost(exc)
            else:
                errors["bw"] = "not connected"
        gc.collect()
        if not self.synced and clock.try_ntp(self.log):
            self.log("clock set by ntp")
        iat = clock.synced_time()
        self.synced = iat is not None
        claims = report.build_claims(
            seq, st.boot, clock.uptime(), max(1, int(self.interval + 0.5)), iat, st.prev,
            storage, net, bw, rssi, mbps, st.dropped, errors or None, self.nonce)
        self.nonce = None
        data = report.sign_report(self.secret, self.public, claims)
        claims = None
        gc.collect()
        dropped = self.outbox.put(seq, data)
        st.seq = seq
        st.prev = report.prev_hash(data)
        st.dropped = dropped
        st.save()
        self.made += 1
        self.log("report seq %d: %d bytes, %d queued%s%s" % (
            seq, len(data), len(self.outbox),
            ", dropped %d oldest (outbox full)" % dropped if dropped else "",
            ", errors: %s" % ",".join(errors) if errors else ""))

    # -- connection ------------------------------------------------------------

    def _connect(self):
        cfg = self.cfg
        try:
            # protocol §2.2: will, subscriptions, birth, then "online".
            self.link.connect(self.topic("status"), (self.topic("cmd"), self.topic("receipt")),
                              ((self.topic("birth"), self.birth()), (self.topic("status"), b"online")))
        except Exception as exc:
            delay = _jitter(self.backoff)
            self.backoff = min(cfg.get("reconnect.max_s"), self.backoff * 2)
            self.next_connect = clock.ms() + int(delay * 1000)
            self.log("broker %s:%d unreachable (%s); %d reports queued; retry in %.1f s" % (
                cfg.get("broker.host"), cfg.get("broker.port"), probes.reason(exc),
                len(self.outbox), delay))
            return False
        self.backoff = cfg.get("reconnect.min_s")
        self.log("connected to %s:%d as surge-%s; %d reports to replay" % (
            cfg.get("broker.host"), cfg.get("broker.port"), self.device, len(self.outbox)))
        return True

    def _lost(self, exc):
        self.link.close(False)
        self.next_connect = clock.ms() + int(_jitter(self.cfg.get("reconnect.min_s")) * 1000)
        self.log("connection lost (%s); %d reports queued" % (probes.reason(exc), len(self.outbox)))

    def flush(self):
        """Publish queued reports oldest first; each leaves only after its PUBACK."""
        topic = self.topic("report")
        while self.link.connected:
            item = self.outbox.oldest()
            if item is None:
                return
            try:
                self.link.publish(topic, item[1], 1)
            except Exception as exc:
                self._lost(exc)
                return
            self.outbox.remove(item[0])

    def run(self, count=0):
        """Report forever, or make ``count`` reports and return once all are acknowledged."""
        self.next_report = clock.ms()
        while True:
            now = clock.ms()
            if not self.link.connected and now >= self.next_connect:
                self._connect()
            done = count and self.made >= count
            if not done and (self.report_now or now >= self.next_report):
                self.report_now = False
                try:
                    self.cycle()
                except Exception as exc:
                    # A full disk or a broken sensor skips this report, not the agent.
                    self.log("report failed: %s" % probes.reason(exc))
                self.next_report += int(self.interval * 1000)
                if self.next_report < clock.ms():
                    self.next_report = clock.ms() + int(self.interval * 1000)
            if self.link.connected:
                self.flush()
            if done and not len(self.outbox):
                break
            now = clock.ms()
            wait = 100 if done else self.next_report - now
            if not self.link.connected:
                wait = min(wait, self.next_connect - now)
            if wait > 0:
                if self.link.connected:
                    try:
                        self.link.poll(wait)
                    except Exception as exc:
                        self._lost(exc)
                else:
                    clock.sleep_ms(wait)
        self.stop()

    def stop(self):
        if self.link.connected:
            # A clean DISCONNECT suppresses the will, so say "offline" ourselves.
            try:
                self.link.publish(self.topic("status"), b"offline", 1, True)
            except Exception:
                pass
        self.link.close(True)
        self.log("stopped after %d reports" % self.made)
