"""A real Redis Sentinel deployment on free ports: a master, a replica and three sentinels.

The sentinels are quick (``down-after-milliseconds`` 400, ``failover-timeout`` 2000): after the
master is killed, the replica is promoted within about one to three seconds. ``url`` is the
gateway's ``redis+sentinel://`` URL; ``port`` the current master's port (for tests that talk
to Redis itself). Everything runs in ``workdir`` and goes in :meth:`stop`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis as redis_sync

from tests.redis_servers import RedisServer, free_port

SERVICE = "gamegw"


class SentinelSet:
    def __init__(self, workdir: Path, *, down_after_ms: int = 400, failover_timeout_ms: int = 2000) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        (workdir / "master").mkdir(parents=True, exist_ok=True)
        (workdir / "replica").mkdir(exist_ok=True)
        self.master = RedisServer(workdir / "master")
        self.replica = RedisServer(workdir / "replica",
                                   extra=("--replicaof", "127.0.0.1", str(self.master.port),
                                          "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/0/{SERVICE}"

    kill_pubsub = RedisServer.kill_pubsub

    @property
    def nodes(self) -> list[RedisServer]:
        return [self.master, self.replica]

    @property
    def ports(self) -> list[int]:
        """Every redis-server's port (the master's and the replica's)."""
        return [n.port for n in self.nodes]

    @property
    def port(self) -> int:
        """The port of the master the sentinels name now."""
        return self.master_address()[1]

    def start(self) -> None:
        """Everything up, or nothing left running (a failed start must not leave processes behind)."""
        try:
            self.master.start()
            self.replica.start()
            self._wait(self._replicated, "the replica never synced")
            for i in range(len(self.sentinel_ports)):
                self.sentinels.append(self._start_sentinel(i))
            # each sentinel has found the replica and the two others: a failover can be agreed on
            self._wait(self._sentinels_ready, "the sentinels never saw each other")
        except BaseException:
            self.stop()
            raise

    def _start_sentinel(self, i: int) -> subprocess.Popen[bytes]:
        """Sentinel ``i``, answering on its port. A port picked free can be taken before the
        sentinel binds it (as another connection's source port): that sentinel exits at once and
        the others never saw it (seen once in a full run). It then gets another port."""
        for _attempt in range(5):
            port = self.sentinel_ports[i]
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            proc = subprocess.Popen([self.master.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with redis_sync.Redis(port=port, socket_timeout=1) as s:
                        if s.execute_command("SENTINEL", "MYID"):  # a sentinel, and this one's port
                            return proc
                except redis_sync.RedisError:
                    time.sleep(0.05)
            proc.kill()
            proc.wait(10)
            self.sentinel_ports[i] = free_port()
        raise RuntimeError(f"sentinel {i} did not start on any of five ports")

    def _replicated(self) -> bool:
        with redis_sync.Redis(port=self.replica.port, decode_responses=True) as r:
            return r.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis_sync.Redis(port=port, decode_responses=True, socket_timeout=1) as s:
                    state = s.sentinel_master(SERVICE)
            except redis_sync.RedisError:
                return False
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def master_address(self) -> tuple[str, int]:
        for port in self.sentinel_ports:
            try:
                with redis_sync.Redis(port=port, decode_responses=True, socket_timeout=1) as s:
                    host, master_port = s.sentinel_get_master_addr_by_name(SERVICE)
                    return str(host), int(master_port)
            except (redis_sync.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answered")

    def current_master(self) -> RedisServer:
        port = self.port
        return next(n for n in self.nodes if n.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the master (no shutdown, no last write to anyone); returns it."""
        node = self.current_master()
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)
        node.proc = None
        return node

    def wait_failover(self, old_port: int, timeout: float = 20) -> float:
        """Until every sentinel names a master other than ``old_port`` and it answers as one; the time it took."""
        started = time.monotonic()

        def promoted() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                with redis_sync.Redis(port=port, decode_responses=True, socket_timeout=1) as s:
                    ports.add(int(s.sentinel_get_master_addr_by_name(SERVICE)[1]))
            if ports == {old_port} or len(ports) != 1:
                return False
            with redis_sync.Redis(port=ports.pop(), decode_responses=True, socket_timeout=1) as r:
                return r.role()[0] == "master"

        self._wait(promoted, "no failover happened", timeout)
        return time.monotonic() - started

    def _wait(self, check: Callable[[], bool], message: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except (redis_sync.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(10)
        self.sentinels = []
        for node in self.nodes:
            node.stop()
