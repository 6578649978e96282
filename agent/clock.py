"""Time for the agent: a wrap-safe monotonic clock and the "is the wall clock
real" test (portable).

A fresh board counts from its epoch (1970 or 2000) until NTP sets the clock;
a report then says "not synced" instead of carrying a made-up iat.
"""

import time

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# 2024-01-01T00:00:00Z: no correctly set clock reads earlier than this.
_SYNC_FLOOR = const(1704067200)

if hasattr(time, "ticks_ms"):
    # ticks_ms wraps (every ~12 days on most ports), so accumulate the
    # differences; the agent reads the clock far more often than that.
    _last = time.ticks_ms()
    _acc = 0

    def ms():
        global _last, _acc
        now = time.ticks_ms()
        _acc += time.ticks_diff(now, _last)
        _last = now
        return _acc

    def sleep_ms(n):
        time.sleep_ms(int(n))
else:
    _start = time.monotonic()

    def ms():
        return int((time.monotonic() - _start) * 1000)

    def sleep_ms(n):
        time.sleep(n / 1000)


def uptime():
    """Whole seconds since the agent started."""
    return ms() // 1000


def synced_time(now=None):
    """POSIX seconds (of ``now``, default the clock) when plausible, else None."""
    if now is None:
        # Some MicroPython ports count from 2000-01-01; iat is always POSIX seconds.
        now = int(time.time()) + (946684800 if time.gmtime(0)[0] == 2000 else 0)
    return now if now >= _SYNC_FLOOR else None


def try_ntp(log):
    """Set the clock from NTP where the firmware has ntptime; True on success."""
    try:
        import ntptime
    except ImportError:
        return False
    try:
        ntptime.settime()
        return True
    except Exception as exc:  # ntptime raises OSError or IndexError on a bad reply
        log("ntp failed: %r" % (exc,))
        return False
