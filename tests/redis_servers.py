"""Real Redis servers for the tests: one redis-server, or a real Redis Cluster of three masters on
free ports, made with ``redis-cli --cluster create``; a test may stop and start any of them.

``GAMEGW_TEST_TOPOLOGY=cluster`` makes the ``redis_server`` fixture (and so ``cluster_factory``
and ``process_factory``) hand out one of these instead of a single redis-server
(``=sentinel``: a Sentinel deployment, :mod:`tests.sentinel`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_sync

TOPOLOGIES = ("single", "sentinel", "cluster")  # one redis-server, Sentinel, Redis Cluster
TOPOLOGY = os.environ.get("GAMEGW_TEST_TOPOLOGY", "single")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path, *, persist: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.persist = persist  # an append-only file, so that a restart brings the data back
        self.extra = extra  # more redis-server arguments (a replica's --replicaof)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always", "--dir", str(self.workdir),
             *self.extra_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_sync.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def extra_args(self) -> list[str]:
        return list(self.extra)

    @property
    def ports(self) -> list[int]:
        """Every redis-server's port (one here)."""
        return [self.port]

    def kill_pubsub(self) -> int:
        """``CLIENT KILL TYPE pubsub`` on every redis-server; how many connections it cut."""
        killed = 0
        for port in self.ports:
            killer = redis_sync.Redis(port=port)
            try:
                killed += int(killer.client_kill_filter(_type="pubsub"))
            finally:
                killer.close()
        return killed

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class ClusterNode(RedisServer):
    """One master: cluster mode on, its own folder (nodes.conf and the append-only file survive a restart)."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        super().__init__(workdir, persist=persist)
        self.bus_port = free_port()  # not port + 10000, which may be taken or beyond 65535

    def extra_args(self) -> list[str]:
        return ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-port", str(self.bus_port),
                "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                "--cluster-allow-reads-when-down", "no"]


class RedisClusterServer:
    kill_pubsub = RedisServer.kill_pubsub

    """Three masters (no replicas) covering the 16384 slots; ``url`` is ``redis+cluster://a,b,c/0``."""

    def __init__(self, workdir: Path, *, masters: int = 3, persist: bool = False) -> None:
        self.nodes = []
        for i in range(masters):
            folder = workdir / f"node{i}"
            folder.mkdir(parents=True, exist_ok=True)
            self.nodes.append(ClusterNode(folder, persist=persist))
        self.port = self.nodes[0].port
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.url = f"redis+cluster://{hosts}/0"
        self.created = False

    def start(self) -> None:
        """Start the masters; the first time, make them a cluster (later, they know it from nodes.conf)."""
        for node in self.nodes:
            node.start()
        if self.created:
            self.wait_ok()
            return
        self.created = True
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (apt-get install redis-tools)")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        self.wait_ok()

    def wait_ok(self, timeout: float = 20) -> None:
        """Until every master says cluster_state:ok and knows every other one."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._ok(n.port) for n in self.nodes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def _ok(self, port: int) -> bool:
        client = redis_sync.Redis(port=port)
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text
        except redis_sync.RedisError:
            return False
        finally:
            client.close()

    def node_of(self, key: str) -> ClusterNode:
        """The master that holds ``key``'s slot."""
        client = redis_sync.Redis(port=self.port)
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            client.close()
        raise LookupError(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def wipe(self) -> None:
        """Lose the data of the stopped masters (their append-only files), not the cluster's layout."""
        for node in self.nodes:
            shutil.rmtree(node.workdir / "appendonlydir", ignore_errors=True)
