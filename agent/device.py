"""Start-up of the agent on MicroPython (the bundle's main.py calls ``start``).

Loads the config beside main.py, brings up Wi-Fi where the firmware has it,
creates the device key on first start (printing only the public half) and
returns the agent wired to the MQTT link (umqtt.simple or the shim).  Start
is separate from the run loop so main.py can unload this module and the
config rules before the first report: on a 64 KB heap every KB counts.
"""

import gc
import sys

from agent import config, fsutil


def log(msg):
    print("surge-agent: " + msg)


def _wifi(cfg):
    try:
        import network
    except ImportError:
        return
    ssid = cfg.get("wifi.ssid")
    w = network.WLAN(network.STA_IF)
    w.active(True)
    if ssid and not w.isconnected():
        log("joining wifi %s" % ssid)
        w.connect(ssid, cfg.get("wifi.password"))
        from agent import clock
        end = clock.ms() + 20000
        while not w.isconnected() and clock.ms() < end:
            clock.sleep_ms(200)
        if not w.isconnected():
            log("wifi %s not joined yet; reports stay queued" % ssid)


def _key(cfg):
    from agent import devkey
    path = cfg.path("key_file")
    if not fsutil.exists(path):
        devkey.create(path)
        _, public = devkey.load(path)
        from agent import report
        log("generated device key: device id %s" % report.device_id(public))
        log("public key: %s" % "".join("%02x" % b for b in public))
    return devkey.load(path)


def load_config(base):
    try:
        return config.load(fsutil.join(base, "config.json"))
    except config.ConfigError as exc:
        log("config error: %s" % exc)
        sys.exit(2)


def start(cfg, argv=()):
    """(agent, count) ready to run; ``--count N`` in argv overrides the config."""
    count = cfg.get("count")
    argv = list(argv)
    if "--count" in argv:
        count = int(argv[argv.index("--count") + 1])
    _wifi(cfg)
    secret, public = _key(cfg)
    gc.collect()
    from agent import report
    from agent.link import Link
    from agent.runner import Agent
    link = Link("surge-" + report.device_id(public), cfg.get("broker.host"), cfg.get("broker.port"),
                cfg.get("broker.username") or report.device_id(public), cfg.get("broker.password"),
                cfg.get("broker.keepalive"), cfg.get("broker.tls"), cfg.path("broker.ca_file"))
    agent = Agent(cfg, secret, public, link, sys.implementation.name, log)
    return agent, count
