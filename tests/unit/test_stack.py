"""The local stack's own checks that need no service: ports and their holders."""

from __future__ import annotations

import os
import socket

import pytest

from replicator.config import load_settings
from replicator.errors import StackError
from replicator.stack import LocalStack


def _stack() -> LocalStack:
    return LocalStack(load_settings(None))


def test_default_ports_lie_below_the_ephemeral_range() -> None:
    """A client socket can be handed any port of Linux's ephemeral range (32768-60999); the
    stack's servers must not need one of those."""
    s = load_settings(None)
    ports = [
        s.postgres.port,
        s.stack.kafka_port,
        s.stack.controller_port,
        s.stack.connect_port,
        s.stack.dynamodb_port,
    ]
    assert all(1024 < port < 32768 for port in ports), ports
    assert s.kafka.bootstrap_servers.endswith(f":{s.stack.kafka_port}")
    assert s.connector.url.endswith(f":{s.stack.connect_port}")
    assert str(s.dynamodb.endpoint_url).endswith(f":{s.stack.dynamodb_port}")


def test_a_listener_on_the_port_is_named_with_its_pid() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(StackError) as refused:
            _stack()._ensure_port_free("kafka", port)
    message = str(refused.value)
    assert f"port {port}" in message
    assert f"pid {os.getpid()}" in message and "listening" in message


def test_a_client_socket_holding_the_port_is_found_too() -> None:
    """Nothing listens, so a connect() probe sees the port free, yet the server's bind fails:
    the check must bind, as the server will."""
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.bind(("127.0.0.1", 0))
        client.connect(listener.getsockname())
        port = client.getsockname()[1]
        with pytest.raises(StackError) as refused:
            _stack()._ensure_port_free("dynamodb", port)
    message = str(refused.value)
    assert f"port {port}" in message and f"pid {os.getpid()}" in message
    assert "connection" in message


def test_a_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _stack()._ensure_port_free("postgres", port)  # raises if it were taken
