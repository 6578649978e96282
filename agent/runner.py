"""The agent's main loop (portable): when to report, connect and deliver.

One report (measure, sign, queue) is agent.cycle, the MQTT session (connect,
replay, reconnect) agent.session, commands agent.commands.

Order of durable writes, so a power cut at any point loses nothing:
the boot counter is saved before anything else; a report goes to the
outbox before the state file records its seq and hash; at start the
newest outbox file wins over a state file that lags behind it.  A report
leaves the outbox only after its PUBACK.
"""

import gc

from agent import VERSION, clock, cycle, fsutil, reason, report, session
from agent.outbox import Outbox
from agent.state import State


class Agent:
    def __init__(self, cfg, secret, public, link, runtime, log=print, caps=None):
        self.cfg = cfg
        self.secret = secret
        self.public = public
        self.link = link
        self.runtime = runtime
        self.log = log
        if not caps:
            from agent import probes  # only for this and in agent.cycle: see there
            caps = probes.caps()
        self.caps = caps
        self.device = report.device_id(public)
        fsutil.makedirs(cfg.path("state_dir"))
        self.state = State(fsutil.join(cfg.path("state_dir"), "state.json"))
        self.state.load()
        self.outbox = Outbox(cfg.path("outbox.dir"), cfg.get("outbox.max_entries"))
        newest = self.outbox.newest()
        if newest is not None and newest[0] > self.state.seq:
            # Killed between storing a report and saving the state: resume
            # after it. It carried the dropped count saved before it; what
            # storing it dropped (outbox full) is not known, so the next report
            # says 0 and the gateway sees those drops only as a seq gap.
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
        claims = report.build_birth(self.cfg.get("board"), "surge-agent", VERSION, self.state.boot,
                                    self.public, self.caps, self.runtime, clock.synced_time())
        gc.collect()
        return report.sign_report(self.secret, self.public, claims)

    def _on_message(self, topic, msg):
        if topic.endswith("/receipt"):
            self.receipts += 1
        elif topic.endswith("/cmd") and msg and msg[0] < 32:
            # Not JSON: a binary storage proof command (protocol §10), handled
            # without agent.commands, which a 48 KB board then need not hold.
            session.storage_command(self, msg)
        elif topic.endswith("/cmd"):
            try:
                from agent import commands
            except Exception as exc:  # MemoryError compiling it on a full board heap
                self.log("bad command: %s" % reason(exc))
                return
            commands.handle(self, msg)

    # -- one report ------------------------------------------------------------

    def cycle(self):
        # ``cycle`` here is the module agent.cycle: a method body does not see
        # the names of its class.
        cycle.make_report(self)

    # -- connection (agent.session) ----------------------------------------

    def connect(self):
        """Connect, with the will, subscriptions, birth and "online"; False
        (and a retry scheduled with backoff) when the broker is unreachable."""
        return session.connect(self)

    def flush(self):
        """Publish queued reports oldest first; each leaves only after its PUBACK."""
        session.flush(self)

    def run(self, count=0):
        """Report forever, or make ``count`` reports and return once all are acknowledged."""
        self.next_report = clock.ms()
        while True:
            now = clock.ms()
            if not self.link.connected and now >= self.next_connect:
                self.connect()
            done = count and self.made >= count
            if not done and (self.report_now or now >= self.next_report):
                self.report_now = False
                try:
                    self.cycle()
                except Exception as exc:
                    # A full disk or a broken sensor skips this report, not the agent.
                    self.log("report failed: %s" % reason(exc))
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
                        session.lost(self, exc)
                else:
                    clock.sleep_ms(wait)
        self.stop()

    def stop(self):
        session.stop(self)

