"""ZeroMQ socket setup for the bus, in one place.

The core binds a ROUTER; every extension connects a DEALER. Options that
keep a peer from exhausting the other's memory or blocking it live here, so
the core and the extension SDK cannot drift apart. Security settings
(CurveZMQ) are applied here too when configured.
"""

from __future__ import annotations

import zmq

from interlook_core.protocol import MAX_MESSAGE_BYTES
from interlook_core.security import CurveKeys, apply_client_keys, apply_server_keys

__all__ = ["has_waiting_messages", "open_dealer", "open_router"]

# Messages queued per peer before sends fail fast with EAGAIN instead of
# growing memory without bound.
HIGH_WATER_MARK = 100_000


def _common(socket: zmq.Socket, max_message_size: int = MAX_MESSAGE_BYTES) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    # Notice a half-open TCP peer (a host that vanished) within minutes.
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)


def open_router(
    context: zmq.Context,
    endpoint: str,
    keys: CurveKeys | None = None,
    max_message_size: int = MAX_MESSAGE_BYTES,
) -> zmq.Socket:
    """Bind the core's ROUTER socket, a CURVE server when ``keys`` are given.

    A peer sending a message over ``max_message_size`` bytes is disconnected
    by libzmq before the message is read.

    Sends to an unknown or vanished peer raise ``zmq.ZMQError`` with
    ``EHOSTUNREACH`` instead of being dropped silently. With ``keys``, the
    caller must have started the authenticator first.
    """
    socket = context.socket(zmq.ROUTER)
    _common(socket, max_message_size)
    if keys is not None:
        apply_server_keys(socket, keys)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError:
        socket.close(linger=0)
        raise
    return socket


def open_dealer(
    context: zmq.Context, endpoint: str, keys: CurveKeys | None = None
) -> zmq.Socket:
    """Connect an extension's DEALER socket to the core (a CURVE client with ``keys``).

    The routing id is left to the core's ROUTER: two instances with the
    same extension name must never share one.
    """
    socket = context.socket(zmq.DEALER)
    _common(socket)
    if keys is not None:
        apply_client_keys(socket, keys)
    socket.connect(endpoint)
    return socket


def has_waiting_messages(socket: zmq.Socket) -> bool:
    """True when a message can be read now.

    A ZeroMQ socket's file descriptor is edge-triggered, and a send can use up
    the edge of a message that arrived meanwhile: after sending, ask here
    before waiting on the descriptor again.
    """
    return bool(int(socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
