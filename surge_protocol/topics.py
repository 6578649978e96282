"""The v1 MQTT topic tree (docs/protocol.md), one definition for every side.

Portable: CPython and MicroPython (this module ships to boards), so plain
%-formatting and no typing imports.  Changing a string here renames a topic
that deployed devices, gateways and ACL files already use.

    surge/v1/<fleet>/<device>/<kind>      one device (report, birth, receipt...)
    surge/v1/<fleet>/batches              batch notices for a fleet
    surge/v1/_gateway/<id>/status|epochs  one gateway
"""

ROOT = "surge/v1"
# The fleet-level slot used by gateway topics; not a valid fleet name.
GATEWAY = "_gateway"
DEVICE_LEVELS = 5  # surge / v1 / fleet / device / kind


def topic(fleet, device, kind):
    """Topic of one device's ``kind`` messages."""
    return "%s/%s/%s/%s" % (ROOT, fleet, device, kind)


def device_base(fleet, device):
    """Prefix of every topic of one device, ending in '/'."""
    return "%s/%s/%s/" % (ROOT, fleet, device)


def fleet_base(fleet):
    """Prefix of every topic of one fleet, ending in '/'."""
    return "%s/%s/" % (ROOT, fleet)


def batches(fleet):
    return "%s/%s/batches" % (ROOT, fleet)


def gateway_topic(gateway_id, kind):
    """``surge/v1/_gateway/<id>/<kind>``; kind is "status" or "epochs"."""
    return "%s/%s/%s/%s" % (ROOT, GATEWAY, gateway_id, kind)


def every_device(kind):
    """Subscription filter matching ``kind`` of every device of every fleet."""
    return "%s/+/+/%s" % (ROOT, kind)


def every_fleet_batches():
    return "%s/+/batches" % ROOT


def every_gateway():
    return "%s/%s/#" % (ROOT, GATEWAY)


def parse(topic_name):
    """(fleet, device, kind) of a device topic, or None if it is not one."""
    parts = topic_name.split("/")
    if len(parts) != DEVICE_LEVELS or parts[0] + "/" + parts[1] != ROOT:
        return None
    return parts[2], parts[3], parts[4]
