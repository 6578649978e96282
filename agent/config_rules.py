"""Validation of the agent config (portable; agent.config loads it on demand).

The rules are a text table parsed at run time rather than a tuple of lambdas:
MicroPython compiles a module in one piece, and one big expression of
lambdas needs more heap to compile than a 64 KB board can spare.
Columns: field | kind | default (JSON; * = required) | what it must be.
"""

import json

from agent.config import REDACTED, ConfigError, Config

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# const() (MicroPython 1.19 and later): the table and the section names live
# in the function's constants, not under global names, which a board would
# keep as interned strings after this module is unloaded.
_RULES = const("""\
version|one|1|1
board|str|*|a board name
fleet|level|*|a topic level (1-64 chars, no '/', '+', '#')
broker.url|str?|null|a URL like mqtt://host:1883 or mqtts://host:8883
broker.host|str?|null|a host name
broker.port|int? 1 65535|null|an integer 1..65535
broker.username|str?|null|a string or null
broker.password|str?|null|a string or null
broker.tls|bool|false|true or false
broker.ca_file|str?|null|a file path or null
broker.keepalive|int 0 65535|60|an integer 0..65535
interval|num 0.1 86400|*|seconds between reports (0.1..86400)
mounts|strs|*|a list of mount point paths
net_interface|str|"auto"|an interface name or 'auto'
outbox.dir|str|"outbox"|a directory path
outbox.max_entries|int 1 1000000|500|an integer 1..1000000
state_dir|str|"state"|a directory path
key_file|str|"device.key"|a file path
bw_probe_bytes|int 0 1048576|4096|an integer 0..1048576 (0 = off)
reconnect.min_s|num 0.05 3600|1|seconds (0.05..3600)
reconnect.max_s|num 0.05 86400|60|seconds (0.05..86400)
wifi.ssid|str?|null|a string
wifi.password|str?|null|a string
count|int 0 1000000000|0|an integer >= 0 (0 = run forever)
hass|bool|false|true or false (Home Assistant discovery)""")
_SECTIONS = const(("broker", "outbox", "reconnect", "wifi"))


def _fail(src, field, expected, value):
    if field.endswith("password"):
        value = REDACTED
    raise ConfigError("%s: field '%s' must be %s, got %s" % (src, field, expected, json.dumps(value)))


def parse(doc, src="config", base=""):
    if not isinstance(doc, dict):
        raise ConfigError("%s: must be a JSON object" % src)
    flat = {}
    for k, v in doc.items():
        if k in _SECTIONS and (v is None or isinstance(v, dict)):
            for sk, sv in (v or {}).items():
                flat[k + "." + sk] = sv
        else:
            flat[k] = v
    rules = [line.split("|") for line in _RULES.split("\n")]
    known = [r[0] for r in rules]
    for k in flat:
        if k not in known:
            raise ConfigError("%s: unknown field '%s'" % (src, k))
    values = {}
    for field, kind, default, expected in rules:
        if field in flat:
            v = flat[field]
        elif default == "*":
            raise ConfigError("%s: missing required field '%s'" % (src, field))
        else:
            v = json.loads(default)
        # Is v of this kind?  Written out here, not in helpers: every function
        # and argument name is an interned string a board keeps for good.
        k = kind.split()
        t = k[0].rstrip("?")
        if v is None and k[0].endswith("?"):
            ok = True
        elif t == "one":
            ok = v == 1 and v is not True
        elif t == "bool":
            ok = v is True or v is False
        elif t == "str":
            ok = isinstance(v, str) and v != ""
        elif t == "level":  # one MQTT topic level: no separator or wildcard (§4.7)
            ok = isinstance(v, str) and 0 < len(v) <= 64 and not ("/" in v or "+" in v or "#" in v)
        elif t == "strs":
            ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            ok = False
        elif t == "int" and not isinstance(v, int):
            ok = False
        else:
            ok = float(k[1]) <= v <= float(k[2])
        if not ok:
            _fail(src, field, expected, v)
        values[field] = v
    url = values["broker.url"]
    if url:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("mqtt", "mqtts"):
            _fail(src, "broker.url", "a URL starting with mqtt:// or mqtts://", url)
        rest = rest.split("/")[0]
        host, port = rest, 8883 if scheme == "mqtts" else 1883
        if rest.startswith("["):  # [IPv6]:port
            host, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = tail[1:]
        elif ":" in rest:
            host, port = rest.rsplit(":", 1)
        try:
            port = int(port)
        except ValueError:
            port = 0
        if not host or not 0 < port < 65536:
            _fail(src, "broker.url", "a URL like mqtt://host:1883", url)
        tls = scheme == "mqtts"
        values["broker.host"] = host
        if values["broker.port"] is None:
            values["broker.port"] = port
        values["broker.tls"] = values["broker.tls"] or tls
    if not values["broker.host"]:
        raise ConfigError("%s: missing required field 'broker.url' (or 'broker.host')" % src)
    if values["broker.port"] is None:
        values["broker.port"] = 8883 if values["broker.tls"] else 1883
    if values["reconnect.max_s"] < values["reconnect.min_s"]:
        _fail(src, "reconnect.max_s", "at least reconnect.min_s", values["reconnect.max_s"])
    return Config(values, base)
