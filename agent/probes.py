"""Measurements for one report (portable).

Each probe returns its figures or None, and records why it failed in the
``errors`` dict (probe name -> short reason) that becomes the ERRORS claim:
a failing probe never stops a report.  Linux (CPython or the MicroPython
unix port) reads /proc and /sys; a board reads what its firmware offers
through the ``network`` module.
"""

import os

# reason() lives in the package (the rest of the agent uses it while this
# module is unloaded on a board; see agent.cycle) and is re-exported here.
from agent import reason


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


def _find(path, name=None):
    """The columns after "<name>:" in /proc/net/dev or /proc/net/wireless; with
    no name, the interface of the default route (destination 00000000) in
    /proc/net/route.  One function, not a callback per table: every function
    name is an interned string a board keeps for good."""
    # Line by line, not f.read(): /proc/net/dev has a line per interface, and
    # on a host with many (containers, bridges) the whole file is more than a
    # fragmented board heap has in one piece.
    f = open(path)
    try:
        for line in f:
            if name is None:
                cols = line.split()
                if len(cols) > 2 and cols[1] == "00000000":
                    return cols[0]
            else:
                head, _, rest = line.partition(":")
                if head.strip() == name:
                    return rest.split()
    finally:
        f.close()
    return None


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
        iface = _find("/proc/net/route")
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
        cols = _find("/proc/net/dev", name)
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
        f = open("/sys/class/net/%s/speed" % name)
        try:
            mbps = int(f.read().strip())
        finally:
            f.close()
        if mbps > 0:
            return None, mbps
    except Exception:
        pass  # Wi-Fi and virtual links have no speed; try the wireless table
    try:
        cols = _find("/proc/net/wireless", name)
        if cols:
            return max(-150, min(0, int(float(cols[2])))), None
    except Exception:
        pass
    errors["link"] = "no link speed or rssi for " + name[:16]
    return None, None
