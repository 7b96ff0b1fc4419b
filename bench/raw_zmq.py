"""The baseline: a bare pyzmq ROUTER and DEALER trading step-shaped msgpack messages.

The ROUTER (the calling process, standing where the core stands) sends
``[b"ILK1", b"STEP", body]`` with a body shaped like a real step request,
keeps ``in_flight`` requests outstanding, and counts replies. The DEALER
(another process, ``python bench/raw_zmq.py dealer ENDPOINT``) decodes each
request and answers ``[b"ILK1", b"RESULT", {"id", "ok", "changes"}]``. Both
sides pack and unpack msgpack, as the core and an extension do, and nothing
else: no state machine, no store, no asyncio. The rate is what the bus
itself allows on this machine, over tcp loopback.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
from procstat import cpu_seconds

__all__ = ["RawResult", "measure_raw", "step_body"]

VERSION = b"ILK1"
WARM_UP = 0.5


@dataclass(frozen=True)
class RawResult:
    """Round trips completed in the measured window, and its length."""

    round_trips: int
    seconds: float
    in_flight: int
    router_cpu: float
    dealer_cpu: float

    @property
    def rate(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    @property
    def router_us(self) -> float:
        return (
            self.router_cpu / self.round_trips * 1e6 if self.round_trips else math.nan
        )

    @property
    def dealer_us(self) -> float:
        return (
            self.dealer_cpu / self.round_trips * 1e6 if self.round_trips else math.nan
        )


def step_body(index: int) -> dict[str, Any]:
    """A step request as the core sends it for one benchmark service."""
    name = f"svc-{index:05d}"
    target = {
        "host": f"10.1.{index // 250 % 250}.{index % 250 + 1}",
        "port": 8080,
        "weight": 1,
    }
    return {
        "id": f"5f2c9a1e-{index:x}",
        "step": "noop.a",
        "action": "deploy",
        "service": {
            "name": name,
            "provider": "provider.file",
            "targets": [target],
            "tls": False,
            "dns_names": [f"{name}.bench.test"],
            "public_ip": None,
        },
    }


def measure_raw(seconds: float = 4.0, in_flight: int = 100) -> RawResult:
    """Run the ROUTER here and a DEALER process; count round trips for ``seconds``.

    Raises:
        RuntimeError: the DEALER process did not connect within 20 s, or
            failed a request.
        zmq.Again: the DEALER stopped answering for 10 s.
    """
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    # A DEALER that dies mid-run ends the measurement with zmq.Again, not a hang.
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    dealer = subprocess.Popen([sys.executable, __file__, "dealer", endpoint])
    try:
        if not router.poll(20_000):
            raise RuntimeError("the raw DEALER process did not connect within 20 s")
        peer = router.recv_multipart()[0]
        counter = 0

        def send_one() -> None:
            nonlocal counter
            counter += 1
            body = msgpack.packb(step_body(counter), use_bin_type=True)
            router.send_multipart([peer, VERSION, b"STEP", body])

        for _ in range(in_flight):
            send_one()
        done = 0
        started = time.monotonic()
        measuring_from = started + WARM_UP
        deadline = measuring_from + seconds
        first_counted = None
        cpu_at_start = (0.0, 0.0)
        while True:
            frames = router.recv_multipart()
            reply = msgpack.unpackb(frames[3], raw=False)
            if not reply["ok"]:
                raise RuntimeError(f"raw DEALER failed a request: {reply}")
            now = time.monotonic()
            if now >= measuring_from:
                if first_counted is None:
                    first_counted = now
                    cpu_at_start = (time.process_time(), cpu_seconds(dealer.pid))
                else:
                    done += 1
            if now >= deadline:
                break
            send_one()
        elapsed = time.monotonic() - (first_counted or started)
        router_cpu = time.process_time() - cpu_at_start[0]
        dealer_cpu = cpu_seconds(dealer.pid) - cpu_at_start[1]
        router.send_multipart([peer, VERSION, b"STOP", msgpack.packb({})])
        return RawResult(done, elapsed, in_flight, router_cpu, dealer_cpu)
    finally:
        try:
            dealer.wait(5)
        except subprocess.TimeoutExpired:
            dealer.kill()
            dealer.wait(5)
        router.close(linger=0)
        context.term()


def _dealer(endpoint: str) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart([VERSION, b"REGISTER", msgpack.packb({"name": "raw"})])
    while True:
        version, command, payload = dealer.recv_multipart()
        if command == b"STOP":
            break
        request = msgpack.unpackb(payload, raw=False)
        reply = {"id": request["id"], "ok": True, "changes": {}}
        dealer.send_multipart(
            [version, b"RESULT", msgpack.packb(reply, use_bin_type=True)]
        )
    dealer.close(linger=0)
    context.term()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "dealer":
        _dealer(sys.argv[2])
    else:
        result = measure_raw()
        rate, in_flight = result.rate, result.in_flight
        print(f"raw ROUTER/DEALER: {rate:,.0f} round trips/s ({in_flight} in flight)")
