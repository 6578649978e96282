"""MQTT link of the agent on MicroPython (portable; CPython uses link_paho).

Wraps a umqtt.simple-style client: micropython-lib's ``umqtt.simple`` when
the firmware has it, else ``firmware_shim.mqtt``.  The agent loop only sees
connect / publish / poll / close and OSError when the connection is gone.
"""

import select

from agent import clock

try:
    from umqtt.simple import MQTTClient
except ImportError:
    from firmware_shim.mqtt import MQTTClient


def for_config(cfg, device_id):
    """The link of a board's agent: client id surge-<device id>, and the device
    id as user name unless the config names one (broker ACLs match on it)."""
    return Link("surge-" + device_id, cfg.get("broker.host"), cfg.get("broker.port"),
                cfg.get("broker.username") or device_id, cfg.get("broker.password"),
                cfg.get("broker.keepalive"), cfg.get("broker.tls"), cfg.path("broker.ca_file"))


class Link:
    def __init__(self, client_id, host, port, user=None, password=None, keepalive=60,
                 tls=False, ca_file=None, timeout=10):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password  # the config's name for it: one interned string fewer
        self.keepalive = keepalive
        self.tls = tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.client = None
        self.on_message = None
        self._last_out = 0
        self._last_in = 0

    @property
    def connected(self):
        return self.client is not None

    def connect(self, will_topic, subscriptions, retained):
        """Connect with the last will, subscribe, then publish ``retained``
        [(topic, bytes)] retained at QoS 1 (status "online", birth)."""
        ctx = None
        if self.tls:
            ctx = True  # the client wraps the socket with the firmware's defaults
            if self.ca_file:
                import ssl
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                f = open(self.ca_file, "rb")
                try:
                    ctx.load_verify_locations(cadata=f.read())
                finally:
                    f.close()
        c = MQTTClient(self.client_id, self.host, self.port, self.user, self.password,
                       self.keepalive, ctx)
        c.timeout = self.timeout  # honoured by the shim; harmless on umqtt
        c.set_last_will(will_topic, b"offline", True, 1)
        c.set_callback(self._deliver)
        try:
            c.connect()
            if c.sock is not None and hasattr(c.sock, "settimeout"):
                c.sock.settimeout(self.timeout)
            self.client = c
            for t in subscriptions:
                c.subscribe(t, 1)
            for t, m in retained:
                c.publish(t, m, True, 1)
        except Exception:
            self.close(False)
            try:
                if c.sock is not None:
                    c.sock.close()
            except Exception:
                pass
            raise
        self._last_out = self._last_in = clock.ms()

    def _deliver(self, topic, msg):
        self._last_in = clock.ms()
        if self.on_message is not None:
            self.on_message(topic.decode() if isinstance(topic, bytes) else topic, msg)

    def publish(self, topic, data, qos=1, retain=False):
        if self.client is None:
            raise OSError(107)  # ENOTCONN
        try:
            self.client.publish(topic, data, retain, qos)
        except Exception:
            self.close(False)
            raise
        self._last_out = clock.ms()
        if qos:
            self._last_in = self._last_out

    def poll(self, wait_ms):
        """Handle incoming packets for up to ``wait_ms``; keeps the session alive."""
        end = clock.ms() + wait_ms
        p = select.poll()
        p.register(self.client.sock, select.POLLIN)
        try:
            while self.client is not None:
                now = clock.ms()
                ka = self.keepalive * 1000
                if ka and now - self._last_in > ka * 3 // 2:
                    raise OSError(110)  # ETIMEDOUT: no PINGRESP within 1.5 keepalives
                if ka and now - self._last_out >= ka // 2:
                    self.client.ping()
                    self._last_out = now
                left = end - now
                if left <= 0:
                    return
                step = min(left, ka // 2) if ka else left
                if p.poll(int(step)):
                    self.client.wait_msg()
                    self._last_in = clock.ms()
                    return  # let the agent react (a command may ask for a report)
        except Exception:
            self.close(False)
            raise
        finally:
            try:
                p.unregister(self.client.sock if self.client else None)
            except Exception:
                pass

    def close(self, clean=True):
        c = self.client
        self.client = None
        if c is None:
            return
        try:
            if clean:
                c.disconnect()
            else:
                c.sock.close()
        except Exception:
            pass
