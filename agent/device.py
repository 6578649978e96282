"""Start-up of the agent on MicroPython (the bundle's main.py calls ``start``).

Loads the config beside main.py, brings up Wi-Fi where the firmware has it,
creates the device key on first start (printing only the public half), then
loads the run loop's modules and makes the agent.  All of it lives here and
not in main.py: main.py is compiled from source on the board, and its code
and every name in it would stay in RAM for as long as the agent runs, while
this module is unloaded once ``start`` returns.
"""

import gc
import sys

from agent import config, fsutil, log, unload


def start(base, argv=()):
    """(agent, count): the agent ready to ``run(count)``, with ``--count N`` in
    argv overriding the config's count.  One function rather than a helper
    per step: every function name is an interned string a board keeps for
    good, long after this module is unloaded."""
    try:
        cfg = config.load(fsutil.join(base, "config.json"))
    except config.ConfigError as exc:
        log("config error: %s" % exc)
        sys.exit(2)
    count = cfg.get("count")
    argv = list(argv)
    if "--count" in argv:
        count = int(argv[argv.index("--count") + 1])
    # Wi-Fi, where the firmware has it (the unix port has no network module).
    try:
        import network
    except ImportError:
        network = None
    if network is not None:
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
        w = network = None
    from agent import devkey
    path = cfg.path("key_file")
    if not fsutil.exists(path):
        devkey.create(path)
        _, public = devkey.load(path)
        from agent import report
        log("generated device key: device id %s" % report.device_id(public))
        log("public key: %s" % "".join("%02x" % b for b in public))
    secret, public = devkey.load(path)
    devkey = None  # a name still bound would keep the module alive after unload()
    # The probe names for the birth: agent.probes is loaded for this now, among
    # the start-up code, not by Agent() once the run loop's code is in.
    from agent import probes
    caps = probes.caps()
    probes = None
    # The key code (and Ed25519, if a first start made the key) was loaded in
    # among the start-up code: unloaded now and loaded again below, where it
    # leaves no holes; the config rules are needed only once.  From .mpy the
    # measuring modules are unloaded too: agent.cycle loads them for each
    # report (see there).
    mpy = globals().get("__file__", "").endswith(".mpy")
    unload("agent.devkey", "agent.config_rules", "firmware_shim.ed25519", "firmware_shim.sha512")
    if mpy:
        unload("agent.probes")
    # MicroPython compiles a .py module in one piece, which briefly needs
    # several times the heap the module keeps (~170 bytes per line on the
    # 64-bit unix port), so everything the run loop needs is loaded now, one
    # module at a time on a freshly collected heap, before anything is
    # allocated for running.  The order is measured (tests/portable/
    # heap_bisect.py): the largest compiles first, while the heap is
    # emptiest; agent.runner brings the rest.
    try:
        from umqtt.simple import MQTTClient  # noqa: F401  (agent.link prefers the firmware's client)
    except ImportError:
        gc.collect()
        import firmware_shim.mqtt  # noqa: F401
    names = ("agent.link", "firmware_shim.sha512", "firmware_shim.ed25519", "agent.runner")
    if not mpy:
        names += ("agent.bwprobe",)
    for name in names:
        gc.collect()
        __import__(name)
    from agent import link, report, runner
    agent = runner.Agent(cfg, secret, public, link.for_config(cfg, report.device_id(public)),
                         sys.implementation.name, log, caps)
    # Start-up runs once: this module is gone when main.py drops its reference.
    unload("agent.device")
    return agent, count
