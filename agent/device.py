"""Start-up of the agent on MicroPython (the bundle's main.py calls ``prepare``).

Loads the config beside main.py, brings up Wi-Fi where the firmware has it
and creates the device key on first start (printing only the public half).
It runs before the run-loop modules are loaded, so main.py can unload this
module, the key code and the config rules first and the run loop's code
then fills the holes they leave: on a 64 KB heap a few KB of holes too small
for a 512-byte buffer decide whether a report can be made.
"""

import sys

from agent import config, fsutil, log


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


def prepare(base, argv=()):
    """(config, secret, public, count); ``--count N`` in argv overrides the config."""
    cfg = load_config(base)
    count = cfg.get("count")
    argv = list(argv)
    if "--count" in argv:
        count = int(argv[argv.index("--count") + 1])
    _wifi(cfg)
    secret, public = _key(cfg)
    return cfg, secret, public, count
