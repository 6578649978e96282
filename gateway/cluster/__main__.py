"""Start a 3-node broker cluster on loopback and keep it running until Ctrl-C.

    python -m gateway.cluster rabbitmq --dir DIR     # the engine the gateway consumes (docs/cluster.md)
    python -m gateway.cluster nats --dir DIR         # the one it was measured against
    python -m gateway.cluster demo --dir DIR [--duration S]   # RabbitMQ + PostgreSQL + 2 gateways + devices

Prints each node's MQTT and AMQP (or NATS) URL and the `surge gateway run`
options that use them.  DIR keeps the nodes' data: run it again with the
same DIR and the nodes come back with their queues.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from gateway.cluster.common import ClusterError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.cluster", description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=("rabbitmq", "nats", "demo"))
    ap.add_argument("--dir", required=True, help="data directory of the nodes (created if missing)")
    demo = ap.add_argument_group("demo (gateway/cluster/demo.py)")
    demo.add_argument(
        "--duration",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the devices publish (default 60; 0 = until Ctrl-C)",
    )
    demo.add_argument("--devices", type=int, default=12, metavar="N", help="simulated devices (default 12)")
    demo.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between a device's reports (default 1)"
    )
    demo.add_argument("--db", metavar="URL", help="postgresql:// of a server to use instead of a temporary one")
    demo.add_argument(
        "--chain", metavar="URL", help="JSON-RPC endpoint instead of a hardhat node (key in $SURGE_CHAIN_KEY)"
    )
    demo.add_argument(
        "--kill-leader-after",
        type=float,
        metavar="S",
        help="SIGKILL the leading gateway S seconds in, restart it after the takeover",
    )
    args = ap.parse_args(argv)
    work = Path(args.dir).resolve()
    if args.engine == "demo":
        if args.devices < 1 or args.interval <= 0 or args.duration < 0:
            ap.error("--devices must be at least 1, --interval above 0 and --duration not negative")
        from gateway.cluster.demo import run

        return run(
            work, args.duration, args.devices, args.interval, args.db, args.chain, args.kill_leader_after, sys.stdout
        )
    stop = threading.Event()
    up = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not up.is_set():
            raise KeyboardInterrupt  # still starting: start() stops the nodes it started
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.engine == "rabbitmq":
            from gateway.cluster.rabbitmq import RabbitCluster

            rc = RabbitCluster(work, ports_file=work / "ports.json")
            rc.start()
            rc.declare_reports_queue(1)
            up.set()
            for n in rc.nodes:
                print("node %d  %s  MQTT %s  AMQP %s" % (n.index, n.name, n.mqtt_url, n.amqp_url))
            print(
                "gateway: surge gateway run --broker %s --mqtt-version 3.1.1 --source %s"
                % (rc.nodes[0].mqtt_url, ",".join(rc.amqp_urls)),
                flush=True,
            )
            stop.wait()
            rc.stop()
        else:
            from gateway.cluster.nats import NatsCluster

            nc = NatsCluster(work)
            nc.start()
            up.set()
            for m in nc.nodes:
                print("node %d  %s  MQTT mqtt://127.0.0.1:%d  NATS %s" % (m.index, m.name, m.mqtt_port, m.url))
            print("(the gateway does not consume from NATS; docs/cluster.md says why)", flush=True)
            stop.wait()
            nc.stop()
    except ClusterError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
