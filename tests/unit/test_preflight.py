"""components.preflight on real loopback sockets: an SSH banner, a silent listener, a refused port."""

from __future__ import annotations

import socket
import threading
import time

from components.preflight import ssh_problem


def serve(reply: bytes | None):
    """A loopback listener that sends `reply` to each connection (None: never says a word)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns = []

    def accept():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            conns.append(c)
            if reply is not None:
                c.sendall(reply)

    threading.Thread(target=accept, daemon=True).start()
    return sock, conns


def test_a_real_ssh_banner_passes():
    sock, _ = serve(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    try:
        assert ssh_problem("127.0.0.1", sock.getsockname()[1], 2) is None
    finally:
        sock.close()


def test_lines_before_the_banner_are_allowed():  # RFC 4253, 4.2
    sock, _ = serve(b"welcome\r\nSSH-2.0-x\r\n")
    try:
        assert ssh_problem("127.0.0.1", sock.getsockname()[1], 2) is None
    finally:
        sock.close()


def test_a_silent_listener_fails_within_the_dial_timeout_naming_the_keys():
    sock, _ = serve(None)
    port = sock.getsockname()[1]
    try:
        started = time.monotonic()
        problem = ssh_problem("127.0.0.1", port, 1, attempts=5)
        took = time.monotonic() - started
    finally:
        sock.close()
    assert problem and f"127.0.0.1:{port}" in problem and "no SSH banner within 1 s" in problem
    assert "homelab-media:ssh.host" in problem and "homelab-media:ssh.port" in problem
    assert took < 4, "a silent listener is not retried: waiting longer would not make it speak"


def test_something_that_is_not_ssh_fails():
    sock, _ = serve(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        problem = ssh_problem("127.0.0.1", sock.getsockname()[1], 1)
    finally:
        sock.close()
    assert problem and "cannot reach the node's sshd" in problem


def test_a_refused_port_is_retried_then_named():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    problem = ssh_problem("127.0.0.1", port, 1, attempts=2, pause=0.05)
    assert problem and f"127.0.0.1:{port}" in problem and "refused" in problem.lower()
