"""Detecting a client that hung up, on real sockets."""

from __future__ import annotations

import socket
import ssl

import pytest

from zeh_mssql.disconnect import disconnect_probe, peer_closed


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_an_idle_open_connection_is_not_closed(pair):
    server, _client = pair
    assert not peer_closed(server)


def test_a_closed_peer_is_noticed(pair):
    server, client = pair
    client.close()
    assert peer_closed(server)


def test_bytes_from_the_peer_are_not_a_close_and_stay_unread(pair):
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert not peer_closed(server)
    assert server.recv(100) == b"GET / HTTP/1.1\r\n"


def test_a_close_behind_unread_bytes_is_noticed_over_tcp():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.sendall(b"\x15\x03\x03")  # the start of a TLS alert record, left unread
        client.close()
        assert peer_closed(server)
    finally:
        server.close()
        listener.close()


def test_a_socket_closed_on_our_side_counts_as_gone(pair):
    server, _client = pair
    server.close()
    assert peer_closed(server)


def test_a_tls_socket_is_peeked_at_the_tcp_level(pair):
    server, client = pair
    # Wrapping without a handshake is enough: peer_closed never reads TLS records.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls = context.wrap_socket(server, server_side=True, do_handshake_on_connect=False)
    try:
        assert not peer_closed(tls)
        client.close()
        assert peer_closed(tls)
    finally:
        tls.close()


def test_probe_uses_the_socket_a_server_exposes(pair):
    server, client = pair
    for key in ("gunicorn.socket", "werkzeug.socket"):
        probe = disconnect_probe({key: server})
        assert probe is not None
        assert not probe()
    client.close()
    probe = disconnect_probe({"gunicorn.socket": server})
    assert probe is not None
    assert probe()


def test_no_probe_without_a_socket():
    assert disconnect_probe({}) is None
    assert disconnect_probe({"werkzeug.socket": "not a socket"}) is None
