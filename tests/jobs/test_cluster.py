"""The local head's port choice (the head itself is started by the `ray_head` fixture of the other job tests)."""

import socket

from ardiff_scale.jobs.cluster import HOST, free_ports


def test_ports_picked_together_are_distinct_and_bindable():
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports[:8]:
        with socket.socket() as s:
            s.bind((HOST, port))
