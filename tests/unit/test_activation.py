"""Which inherited socket the supervisor serves under socket activation."""
from __future__ import annotations

import os
import socket

import pytest

from mayflyd.supervisor.activation import ActivationError, activated_listener, listener_among


def test_without_listen_fds_nothing_is_inherited() -> None:
    environ = {"PATH": "/bin"}
    assert activated_listener("127.0.0.1", 8080, environ) is None
    assert environ == {"PATH": "/bin"}


def test_sockets_meant_for_another_process_are_left_and_the_variables_removed() -> None:
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "x", "PATH": "/bin"}
    assert activated_listener("127.0.0.1", 8080, environ) is None
    assert environ == {"PATH": "/bin"}  # no child of ours takes them either


def test_a_bad_count_is_an_error() -> None:
    with pytest.raises(ActivationError, match="LISTEN_FDS='x'"):
        activated_listener("127.0.0.1", 8080, {"LISTEN_FDS": "x", "LISTEN_PID": str(os.getpid())})


def test_the_socket_on_the_listen_address_is_chosen_and_the_others_closed() -> None:
    other = socket.create_server(("127.0.0.1", 0))
    wanted = socket.create_server(("127.0.0.1", 0))
    port = wanted.getsockname()[1]
    chosen = listener_among([other, wanted], "127.0.0.1", port)
    assert chosen is wanted
    assert other.fileno() == -1
    # A host name resolves to the address; port 0 takes any port.
    assert listener_among([wanted], "localhost", port) is wanted
    assert listener_among([wanted], "127.0.0.1", 0) is wanted
    wanted.close()


def test_a_dual_stack_socket_serves_all_ipv4_addresses() -> None:
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    both = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    with both:
        assert listener_among([both], "0.0.0.0", both.getsockname()[1]) is both


def test_no_match_names_what_was_inherited() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with pytest.raises(ActivationError, match=rf"none of the inherited sockets \(fd \d+: TCP 127.0.0.1:{port}\) "
                                              r"is the configured listen address 127.0.0.1:1\b"):
        listener_among([sock], "127.0.0.1", 1)
    assert sock.fileno() == -1


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_a_socket_that_does_not_listen_for_tcp_is_refused(kind: socket.SocketKind) -> None:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with pytest.raises(ActivationError, match=f"127.0.0.1:{port} is not a listening TCP socket"):
        listener_among([sock], "127.0.0.1", port)
    assert sock.fileno() == -1
