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

REDACTED = "***"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class Config:
    def __init__(self, values, base):
        self.base = base
        self.values = values

    def get(self, key):
        return self.values[key]

    def path(self, key):
        """A path field resolved against the config file's directory."""
        p = self.values[key]
        return p if p is None else fsutil.join(self.base, p)

    def __repr__(self):
        shown = {}
        for k, v in self.values.items():
            shown[k] = REDACTED if (k.endswith("password") and v is not None) else v
        return "Config(%r)" % (shown,)


def parse(doc, src="config", base=""):
    """Validate a decoded config document; returns a Config."""
    from agent import config_rules
    try:
        return config_rules.parse(doc, src, base)
    finally:
        from agent import mem
        mem.unload("agent.config_rules")  # the rule table is needed only once


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
