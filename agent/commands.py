"""Commands from the gateway on the device's ``cmd`` topic (portable).

Loaded on the first command, not at start: commands are rare, and on a
64 KB board the RAM is worth more to the report cycle than to code that
may never run.
"""

from agent import clock, reason


def handle(agent, msg):
    """Apply one ``cmd`` message (protocol §2.4): a JSON object; unknown
    commands and members are ignored."""
    try:
        import json
        doc = json.loads(bytes(msg).decode())
        name = doc.get("cmd")
        arg = doc.get("interval")
        if name == "report-now":
            agent.report_now = True
            nonce = doc.get("nonce")
            if nonce is not None:
                import binascii
                nonce = binascii.unhexlify(nonce)
                if 8 <= len(nonce) <= 64:
                    agent.nonce = nonce
        elif (name == "set-interval" and isinstance(arg, int) and not isinstance(arg, bool)
              and 30 <= arg <= 86400):
            agent.interval = arg
            agent.next_report = min(agent.next_report, clock.ms() + int(arg * 1000))
            agent.state.interval = arg
            agent.state.save()
            agent.log("interval set to %s s by command" % arg)
        else:
            agent.log("ignored command %r" % (name,))
    except Exception as exc:
        agent.log("bad command: %s" % reason(exc))
