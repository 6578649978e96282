"""Agent building blocks on CPython and the MicroPython unix port alike:
the device CBOR encoder against firmware_shim.cbor, config validation, the
outbox, the state file and the clock rules.  ``main(tmpdir)`` prints
"PASS <n>"; run as ``micropython tests/portable/agent_unit_checks.py DIR``.
"""

import os
import sys

from firmware_shim import cbor
from agent import cborw, clock, config, fsutil, report
from surge_protocol import claims as C
from agent.outbox import Outbox
from agent.state import State


def _raises_config(doc, field):
    try:
        config.parse(doc, "t.json")
    except config.ConfigError as exc:
        assert ("'%s'" % field) in str(exc), str(exc)
        return str(exc)
    raise AssertionError("accepted bad %s" % field)


def check_cborw():
    values = [0, 23, 24, 255, 256, 65535, 65536, 2 ** 32, 2 ** 64 - 1, -1, -24, -25, -65537,
              b"", b"\x00" * 300, "", "surge-agent", "\u00fc", [], [1, [2, [3]]], True, False, None,
              {}, {256: 0, -1: 0, 6: 0, "a": 1, b"b": 2}, {-65537: {1: 2, 14: {"storage:/sd": "ENOENT"}}}]
    for v in values:
        assert cborw.dumps(v) == cbor.dumps(v), v
    assert cborw.tagged(18, [b"p", {}, b"x", b"s"]) == cbor.dumps(cbor.Tag(18, [b"p", {}, b"x", b"s"]))
    # Claim keys repeated in report.py agree with surge_protocol.claims.
    s = report.build_claims(1, 2, 3, 4, iat=5, prev=b"p", storage=(6, 7), net=(8, 9), bw=(10, 11),
                            rssi=-12, link_mbps=13, dropped=14, errors={"e": "x"}, nonce=b"n")
    assert set(s) == {C.IAT, C.NONCE, C.UPTIME, C.BOOTCOUNT, C.SURGE}
    assert s[C.SURGE][C.PREV] == b"p" and s[C.SURGE][C.ERRORS] == {"e": "x"}
    assert s[C.SURGE][C.LINK_MBPS] == 13 and s[C.SURGE][C.BW_DOWN] == 11
    b = report.build_birth("esp32", "surge-agent", "0.1", 3, b"k" * 32, ["storage"], "micropython")
    assert b[C.SURGE][C.PUBKEY] == b"k" * 32 and b[C.SWNAME] == "surge-agent" and C.IAT not in b
    assert b[C.HWMODEL] == b"esp32" and b[C.SWVERSION] == ["0.1"]  # RFC 9711 types
    assert report.kid(b"k" * 32) == C.kid(b"k" * 32)
    assert report.device_id(b"k" * 32) == C.device_id(b"k" * 32)
    assert report.prev_hash(b"r") == C.prev_hash(b"r")
    return len(values) + 10


def _good():
    return {"board": "esp32", "fleet": "f", "broker": {"url": "mqtt://h:1884", "password": "hunter2"},
            "interval": 60, "mounts": ["/"]}


def check_config():
    cfg = config.parse(_good(), "t.json", "/base")
    assert cfg.get("broker.host") == "h" and cfg.get("broker.port") == 1884
    assert cfg.get("broker.tls") is False and cfg.path("outbox.dir") == "/base/outbox"
    assert "hunter2" not in repr(cfg) and config.REDACTED in repr(cfg)
    d = _good()
    d["broker"] = {"url": "mqtts://[::1]"}
    cfg = config.parse(d)
    assert cfg.get("broker.host") == "::1" and cfg.get("broker.port") == 8883 and cfg.get("broker.tls")
    # A Config keeps its values by agent.config's field list: it names every
    # field the rules table has (checked where const() names are attributes,
    # i.e. on CPython), and an unknown key is a KeyError as with a dict.
    from agent import config_rules
    rules = getattr(config_rules, "_RULES", None)
    if rules is not None:
        assert sorted(cfg.values) == sorted(line.split("|")[0] for line in rules.split("\n"))
    assert len(cfg.values) == 25 and cfg.values["fleet"] == "f"
    try:
        cfg.get("nope")
        raise AssertionError("unknown key read")
    except KeyError:
        pass
    n = 8
    for field, patch in (("fleet", {"fleet": "a/b"}), ("interval", {"interval": "60"}),
                         ("mounts", {"mounts": "/"}), ("broker.url", {"broker": {"url": "http://h"}}),
                         ("broker.port", {"broker": {"host": "h", "port": 0}}),
                         ("outbox.max_entries", {"outbox": {"max_entries": 0}}),
                         ("interval", {"interval": True}), ("brokr", {"brokr": 1}),
                         ("reconnect.max_s", {"reconnect": {"min_s": 5, "max_s": 1}})):
        d = _good()
        d.update(patch)
        _raises_config(d, field)
        n += 1
    d = _good()
    del d["fleet"]
    assert "missing required field 'fleet'" in _raises_config(d, "fleet")
    d = _good()
    d["broker"]["password"] = 5
    assert "hunter2" not in _raises_config(d, "broker.password")
    return n + 2


def check_outbox(tmp):
    d = fsutil.join(tmp, "ob")
    box = Outbox(d, 3)
    assert len(box) == 0 and box.oldest() is None
    assert box.put(42, b"r42") == 0
    assert "0000000000000042.rep" in os.listdir(d)
    box.put(43, b"r43")
    box.put(44, b"r44")
    assert box.put(45, b"r45") == 1  # full: the oldest (42) makes room
    assert box.oldest() == (43, b"r43") and box.newest() == (45, b"r45")
    # A torn write (*.tmp) is ignored and cleaned up; files are re-read in seq order.
    f = open(fsutil.join(d, "0000000000000046.rep.tmp"), "wb")
    f.write(b"torn")
    f.close()
    box = Outbox(d, 3)
    assert (box.lo, box.hi, len(box)) == (43, 45, 3) and "0000000000000046.rep.tmp" not in os.listdir(d)
    box.remove(43)
    box.remove(43)  # idempotent
    assert box.oldest() == (44, b"r44") and len(box) == 2
    # A file removed by hand is a hole that oldest() steps over; empty is empty.
    os.remove(fsutil.join(d, "0000000000000044.rep"))
    assert box.oldest() == (45, b"r45") and (box.lo, box.hi) == (45, 45)
    box.remove(45)
    assert len(box) == 0 and box.oldest() is None and box.newest() is None
    assert box.put(46, b"r46") == 0 and (box.lo, box.hi) == (46, 46)
    return 13


def check_state(tmp):
    p = fsutil.join(tmp, "state.json")
    st = State(p)
    assert not st.load() and st.boot == 0
    st.boot, st.seq, st.prev, st.dropped = 3, 99, b"\x01" * 16, 2
    st.save()
    st2 = State(p)
    assert st2.load() and (st2.boot, st2.seq, st2.prev, st2.dropped) == (3, 99, b"\x01" * 16, 2)
    assert not fsutil.exists(p + ".tmp")
    return 3


def check_clock():
    assert clock.synced_time(0) is None            # 1970 epoch: fresh board
    assert clock.synced_time(946684800) is None    # 2000 epoch start
    assert clock.synced_time(1704067199) is None   # just before 2024
    assert clock.synced_time(1704067200) == 1704067200
    a = clock.ms()
    clock.sleep_ms(20)
    assert clock.ms() - a >= 15
    return 5


def _rmtree(path):
    for name in os.listdir(path):
        p = fsutil.join(path, name)
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


def main(tmp):
    fsutil.makedirs(tmp)
    total = 0
    for name, fn in (("cborw", check_cborw), ("config", check_config), ("clock", check_clock),
                     ("outbox", lambda: check_outbox(tmp)), ("state", lambda: check_state(tmp))):
        n = fn()
        print("%s: %d checks" % (name, n))
        total += n
    _rmtree(tmp)
    print("PASS %d" % total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
