"""The agent's JSON config, one format for CPython and MicroPython (portable).

Every field is checked on load and an error names the field by its dotted
path (``broker.port``).  Relative paths are taken relative to the config
file's directory, so a bundle directory or a config folder can move as a
whole.  The broker password and the Wi-Fi password never appear in repr().

{
  "version": 1, "board": "esp32", "fleet": "demo",
  "broker": {"url": "mqtt://host:1883", "username": null, "password": null,
             "tls": false, "ca_file": null, "keepalive": 60},
  "interval": 300, "mounts": ["/"], "net_interface": "auto",
  "outbox": {"dir": "outbox", "max_entries": 500},
  "state_dir": "state", "key_file": "device.key", "bw_probe_bytes": 4096,
  "reconnect": {"min_s": 1, "max_s": 60},
  "wifi": {"ssid": "...", "password": "..."}, "count": 0
}
(``broker.host`` and ``broker.port`` may replace ``broker.url``; ``wifi`` and
``count`` are optional.)
"""

from agent import fsutil

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

REDACTED = "***"

# Every field, space-separated and space-framed (agent.config_rules' table
# holds the rules; tests/portable/agent_unit_checks.py checks both name the
# same fields).  A Config keeps its values in a list in this order.
_FIELDS = const(" version board fleet broker.url broker.host broker.port broker.username broker.password"
                " broker.tls broker.ca_file broker.keepalive interval mounts net_interface outbox.dir"
                " outbox.max_entries state_dir key_file bw_probe_bytes reconnect.min_s reconnect.max_s"
                " wifi.ssid wifi.password count hass ")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class Config:
    """The checked values, read with ``get("broker.port")``.

    Kept as a list in the order of _FIELDS rather than a dict: on a board a
    dict of 25 string keys takes ~2.5 KB of heap for the agent's whole life
    (each key is a string object of its own), the list and one string ~1 KB.
    """

    def __init__(self, values, base):
        self.base = base
        self._v = [values[k] for k in _FIELDS.split()]

    def get(self, key):
        i = _FIELDS.find(" " + key + " ")
        if i < 0:
            raise KeyError(key)
        return self._v[_FIELDS.count(" ", 0, i)]

    @property
    def values(self):
        """The fields as a new dict."""
        return dict(zip(_FIELDS.split(), self._v))

    def path(self, key):
        """A path field resolved against the config file's directory."""
        p = self.get(key)
        return p if p is None else fsutil.join(self.base, p)

    def __repr__(self):
        shown = {}
        for k, v in self.values.items():
            shown[k] = REDACTED if (k.endswith("password") and v is not None) else v
        return "Config(%r)" % (shown,)


def parse(doc, src="config", base=""):
    """Validate a decoded config document; returns a Config."""
    # A module of its own, loaded on demand: on a board, agent.device unloads
    # it once the config is read (the rule table is needed only once).
    from agent import config_rules
    return config_rules.parse(doc, src, base)


def load(path):
    try:
        raw = fsutil.read(path)
    except OSError as exc:
        raise ConfigError("%s: cannot read config (%s)" % (path, exc))
    import json
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigError("%s: not valid JSON (%s)" % (path, exc))
    return parse(doc, path, fsutil.dirname(path))
