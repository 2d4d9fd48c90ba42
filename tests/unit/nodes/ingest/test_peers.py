"""Peer identity from the connection: SO_PEERCRED on ipc, the Curve key over ZAP on tcp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from vigil.bus.curve import CurveConfig, Gate, load_public, secure
from vigil.nodes.ingest._peers import Identities, Peer, TenantBinding, peer_of

pytestmark = pytest.mark.verifies("SR-SEC-003")

_SENDER = """
import sys, zmq
with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(sys.argv[1])
    sock.send(b"hello")
"""


def test_an_ipc_peer_is_named_by_the_uid_and_pid_the_kernel_vouches_for(short_tmp: Path) -> None:
    """A message from another process names that process's uid and pid, not ours, and a
    uid binding gives it its tenant and ceiling."""
    endpoint = f"ipc://{short_tmp}/front"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        child = subprocess.Popen([sys.executable, "-c", _SENDER, endpoint])
        try:
            assert router.poll(20_000), "the sender never connected"
            frames = router.recv_multipart(copy=False)
        finally:
            child.wait(timeout=20)
    peer = peer_of(frames[-1])
    assert peer == Peer(f"uid:{os.getuid()}/pid:{child.pid}", os.getuid(), child.pid)
    bound = Identities([TenantBinding(tenant="cams", uid=os.getuid(), max_priority=3)])
    assert bound.peer(frames[-1]) == Peer(peer.name, peer.uid, peer.pid, "cams", 3)


def test_a_curve_peer_is_named_by_its_authenticated_key(short_tmp: Path) -> None:
    """On a Curve endpoint the peer is the public key ZAP let in."""
    server_public, server_secret = zmq.auth.create_certificates(str(short_tmp), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(short_tmp), "client")
    server = CurveConfig(
        server_key=server_public,
        client_secret=client_secret,
        server_secret=server_secret,
        allowed=(client_public,),
    )
    with zmq.Context() as ctx, Gate(ctx, server, report=lambda _: None) as gate:
        router = ctx.socket(zmq.ROUTER)
        dealer = ctx.socket(zmq.DEALER)
        try:
            router.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.LINGER, 0)
            secure(router, "tcp://127.0.0.1:0", server, "server", gate)
            router.bind("tcp://127.0.0.1:0")
            endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
            secure(dealer, endpoint, server, "client")
            dealer.connect(endpoint)
            dealer.send(b"hello")
            assert router.poll(20_000)
            frames = router.recv_multipart(copy=False)
        finally:
            dealer.close()
            router.close()
    key = load_public(client_public).decode()
    assert peer_of(frames[-1]).name == f"key:{key}"


def test_a_bound_peer_counts_against_its_tenant_and_may_claim_no_other() -> None:
    """A peer bound to a tenant is that tenant (an empty claim means it); another is refused."""
    identities = Identities([TenantBinding(tenant="cams", uid=1000, max_priority=5)])
    bound = Peer("uid:1000/pid:7", 1000, 7, "cams", 5)
    assert identities.tenant(bound, "") == "cams"
    assert identities.tenant(bound, "cams") == "cams"
    assert identities.tenant(bound, "other") is None


def test_no_other_peer_may_claim_a_bound_tenant() -> None:
    """An unbound peer claiming a tenant bound to someone else is refused; free names pass."""
    identities = Identities([TenantBinding(tenant="cams", uid=1000)])
    stranger = Peer("uid:0/pid:9", 0, 9)
    assert identities.tenant(stranger, "cams") is None
    assert identities.tenant(stranger, "mine") == "mine"


def test_the_safety_priority_is_the_launchs_own_nodes() -> None:
    """A peer is capped at its ceiling unless it is one of the launch's nodes (its pid in the
    run graph on ipc, a node key on Curve), which may use the safety priority."""
    identities = Identities(
        [],
        default_max_priority=6,
        node_keys=frozenset({"K" * 40}),
        node_pids=lambda: frozenset({4242}),
    )
    watchdog = Peer("uid:0/pid:4242", 0, 4242, max_priority=6)
    client = Peer("uid:0/pid:99", 0, 99, max_priority=6)
    assert identities.may_use(client, 6)
    assert not identities.may_use(client, 7)
    assert identities.may_use(watchdog, 7)
    assert identities.may_use(Peer("key:" + "K" * 40), 7)
    assert not identities.may_use(Peer("key:" + "C" * 40), 7)


def test_without_a_binding_a_peer_has_no_priority() -> None:
    """By default an unbound peer may send at priority 0 only: precedence is granted by a
    binding, never claimed."""
    identities = Identities([TenantBinding(tenant="cams", uid=1000, max_priority=5)])
    assert Peer("uid:0/pid:9", 0, 9).max_priority == 0
    assert not identities.may_use(Peer("uid:0/pid:9", 0, 9), 1)


def test_bindings_name_exactly_one_of_key_and_uid() -> None:
    """A binding with both a key and a uid, or neither, is a configuration error."""
    with pytest.raises(ValueError, match="exactly one"):
        TenantBinding(tenant="t")
    with pytest.raises(ValueError, match="exactly one"):
        TenantBinding(tenant="t", key="k" * 40, uid=1)
