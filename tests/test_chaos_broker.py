"""A real Redis started by the test, and the broker faults on it: killed (with and without an
append-only file), frozen, cut off from a client -- each proven by the kernel, each restored."""

from __future__ import annotations

import shutil
import time

import psutil
import pytest

from chaos._scenario import Scenario
from chaos.engines.redis_server import RedisServer

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed: apt-get install redis-server (make test does)",
)


@pytest.fixture
def server(tmp_path):
    made = []

    def make(aof: bool = False) -> RedisServer:
        made.append(RedisServer(tmp_path / f"r{len(made)}", aof=aof).start())
        return made[-1]

    yield make
    pids = [s.pid for s in made]
    for s in made:
        s.stop()
    assert not [p for p in pids if psutil.pid_exists(p) and _alive(p)], "a server outlived stop()"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _client(s: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(s.url, socket_timeout=5)


@pytest.mark.parametrize("aof", [False, True])
def test_a_killed_broker_comes_back_with_what_its_aof_kept(server, aof: bool) -> None:
    s = server(aof=aof)
    before = s.pid
    assert s.url.startswith("redis://127.0.0.1:")
    _client(s).rpush("queue", "m1", "m2")
    chaos = Scenario("t", 1)
    with chaos.broker_killed(s) as fault:
        assert not _alive(before)
    assert s.pid != before and s.ping() and s.restarts == 1
    assert fault.fired == 1
    assert fault.effect.startswith("redis-server ended by SIGKILL; started again")
    assert ("append-only file on" if aof else "no persistence") in fault.detail
    kept = [m.decode() for m in _client(s).lrange("queue", 0, -1)]
    assert kept == (["m1", "m2"] if aof else [])


def test_a_frozen_broker_answers_nothing_until_the_block_ends(server) -> None:
    s = server()
    client = redis.Redis.from_url(s.url, socket_timeout=0.3)
    chaos = Scenario("t", 1)
    with chaos.broker_frozen(s) as fault:
        assert fault.effect == "redis-server stopped (state T)"
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
    assert fault.effect.startswith("redis-server stopped (state T); SIGCONT after")
    assert psutil.Process(s.pid).status() != psutil.STATUS_STOPPED
    assert _client(s).ping()


def test_a_frozen_broker_is_resumed_when_the_block_fails(server) -> None:
    s = server()
    chaos = Scenario("t", 1)
    with pytest.raises(RuntimeError), chaos.broker_frozen(s):
        raise RuntimeError("the scenario failed inside")
    assert _client(s).ping()


def test_a_clients_broker_link_is_broken_from_outside(server, puppet) -> None:
    s = server()
    p = puppet()
    p.send(f"connect 127.0.0.1 {s.port}")
    assert p.answer() == "connected"
    chaos = Scenario("t", 1)
    with chaos.broker_link_broken(p.pid, s) as fault:
        pass
    assert fault.fired == 1 and fault.effect.startswith("1 connection(s) shut down"), fault
    p.send("recv-connected")
    assert p.answer() == "EOF"  # the client's end of the link reads end of file
    assert s.ping()  # the broker itself is untouched


def test_a_client_with_no_link_to_the_broker_is_no_effect(server, puppet) -> None:
    s = server()
    p = puppet()
    chaos = Scenario("t", 1)
    with chaos.broker_link_broken(p.pid, s) as fault:
        pass
    assert fault.no_effect == f"pid {p.pid} had no connection to the broker's port {s.port}"


def test_a_server_that_cannot_start_says_why(tmp_path) -> None:
    blocker = RedisServer(tmp_path / "a").start()
    try:
        clash = RedisServer(tmp_path / "b")
        clash.port = blocker.port
        t0 = time.monotonic()
        with pytest.raises(Exception, match="redis-server exited"):
            clash._spawn()
        assert time.monotonic() - t0 < 10
    finally:
        blocker.stop()
