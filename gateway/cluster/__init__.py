"""Replicated broker clusters on loopback, for tests, the bench and a demo.

``RabbitCluster`` (gateway/cluster/rabbitmq.py) and ``NatsCluster``
(gateway/cluster/nats.py) start three nodes of the engine on free loopback
ports, each with its own data directory and an MQTT listener, wait (bounded)
until they form one cluster, and stop, SIGKILL or restart single nodes.  They
never touch a system service of the same engine on the default ports.  A node
that does not come up raises ``ClusterError`` naming the node and the tail of
its log.  docs/cluster.md says why the gateway uses RabbitMQ.
"""

from __future__ import annotations

from gateway.cluster.common import ClusterError, free_port

__all__ = ["ClusterError", "free_port"]
