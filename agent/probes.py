"""Measurements for one report (portable).

Each probe returns its figures or None, and records why it failed in the
``errors`` dict (probe name -> short reason) that becomes the ERRORS claim:
a failing probe never stops a report.  Linux (CPython or the MicroPython
unix port) reads /proc and /sys; a board reads what its firmware offers
through the ``network`` module.
"""

import os

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_MAX_REASON = const(40)


def reason(exc):
    """A short, stable reason: errno name for OSError, else the exception type."""
    code = exc.args[0] if exc.args else None
    if isinstance(exc, OSError) and isinstance(code, int):
        try:
            import errno
            return errno.errorcode.get(code, "errno %d" % code)
        except ImportError:
            return "errno %d" % code
    text = "%s: %s" % (type(exc).__name__, exc)
    return text[:_MAX_REASON]


def storage(mounts, errors):
    """(total, free) bytes summed over the mounts, each filesystem counted once."""
    total = free = 0
    seen = []
    ok = False
    bad = []
    for m in mounts:
        try:
            dev = os.stat(m)[2]
            st = os.statvfs(m)
        except Exception as exc:
            bad.append("%s %s" % (m[:24], reason(exc)))
            continue
        ok = True
        if dev in seen:
            continue  # two mount points on one filesystem
        seen.append(dev)
        # f_frsize * f_blocks / f_bavail (what an unprivileged writer gets).
        total += st[1] * st[2]
        free += st[1] * st[4]
    if bad:
        # Error keys are probe names (protocol §4.2); the mount goes in the reason.
        errors["storage"] = ", ".join(bad)[:80]
    return (total, free) if ok else None


def _read(path):
    f = open(path)
    try:
        return f.read()
    finally:
        f.close()


def _find(path, pick):
    # Line by line, not f.read(): /proc/net/dev has a line per interface, and
    # on a host with many (containers, bridges) the whole file is more than a
    # fragmented board heap has in one piece.
    f = open(path)
    try:
        for line in f:
            v = pick(line)
            if v is not None:
                return v
    finally:
        f.close()
    return None


def _route(line):
    # /proc/net/route: the interface whose destination is 00000000.
    cols = line.split()
    return cols[0] if len(cols) > 2 and cols[1] == "00000000" else None


def _columns(name):
    # Picks the columns after "<name>:" in /proc/net/dev and /proc/net/wireless.
    def pick(line):
        head, _, rest = line.partition(":")
        return rest.split() if head.strip() == name else None
    return pick


def _default_iface():
    return _find("/proc/net/route", _route)


def caps():
    """Probe names this device runs (the birth's caps claim)."""
    if _wlan() is not None:
        return ["storage", "rssi", "bw"]
    return ["storage", "net", "link", "bw"]


def _wlan():
    try:
        import network
    except ImportError:
        return None
    return network.WLAN(network.STA_IF)


def _linux_iface(iface):
    if iface == "auto":
        iface = _default_iface()
        if iface is None:
            raise OSError(19)  # ENODEV: no default route
    return iface


def net(iface, errors):
    """(rx, tx) byte counters of the interface since it came up."""
    if _wlan() is not None:
        errors["net"] = "firmware has no byte counters"
        return None
    try:
        name = _linux_iface(iface)
        cols = _find("/proc/net/dev", _columns(name))
        if cols:
            return int(cols[0]), int(cols[8])
        errors["net"] = "no interface " + name[:24]
    except Exception as exc:
        errors["net"] = reason(exc)
    return None


def link(iface, errors):
    """(rssi dBm or None, link Mbit/s or None)."""
    w = _wlan()
    if w is not None:
        try:
            if not w.isconnected():
                errors["rssi"] = "wifi not connected"
                return None, None
            return max(-150, min(0, int(w.status("rssi")))), None
        except Exception as exc:
            errors["rssi"] = reason(exc)
            return None, None
    try:
        name = _linux_iface(iface)
    except Exception as exc:
        errors["link"] = reason(exc)
        return None, None
    try:
        mbps = int(_read("/sys/class/net/%s/speed" % name).strip())
        if mbps > 0:
            return None, mbps
    except Exception:
        pass  # Wi-Fi and virtual links have no speed; try the wireless table
    try:
        cols = _find("/proc/net/wireless", _columns(name))
        if cols:
            return max(-150, min(0, int(float(cols[2])))), None
    except Exception:
        pass
    errors["link"] = "no link speed or rssi for " + name[:16]
    return None, None
