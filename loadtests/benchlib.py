"""What the benchmarks share: starting gateways and node clients, pinning, /proc readings."""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the benchmarks read CPU and memory as gamectl loadtest does
from gamegw.gamectl.procstat import cpu_ms as cpu_ms
from gamegw.gamectl.procstat import cpu_split_ms as cpu_split_ms
from gamegw.gamectl.procstat import rss_kb as rss_kb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class SetupError(Exception):
    """Something the benchmark needs is missing or did not start: one line, exit 1."""


def node_modules() -> Path:
    cands = [os.environ.get("NODE_PATH", ""), os.environ.get("PEER_BENCH_CACHE", "") + "/node_modules",
             str(Path.home() / ".cache" / "peer-bench" / "node_modules")]
    for cand in cands:
        for part in cand.split(os.pathsep):
            if part and (Path(part) / "socket.io-client").is_dir() and (Path(part) / "jsonwebtoken").is_dir():
                return Path(part)
    raise SetupError("no node_modules with socket.io-client and jsonwebtoken (set NODE_PATH; "
                     "../shared/peer-bench/run installs them in ~/.cache/peer-bench/node_modules)")


def gamectl_path() -> str:
    for cand in (Path(sys.executable).parent / "gamectl", REPO / ".venv" / "bin" / "gamectl"):
        if cand.exists():
            return str(cand)
    found = shutil.which("gamectl")
    if not found:
        raise SetupError("gamectl not found (install the project: python3 -m venv .venv && .venv/bin/pip install -e .)")
    return found


def check_tools(pin: bool, cpus: tuple[int, int]) -> None:
    if not shutil.which("node"):
        raise SetupError("node is not on PATH")
    if pin:
        if not shutil.which("taskset"):
            raise SetupError("taskset is not on PATH (or pass --no-pin)")
        have = os.sched_getaffinity(0)
        for cpu in cpus:
            if cpu not in have:
                raise SetupError(f"CPU {cpu} is not available here (have {sorted(have)}; pick others or --no-pin)")


def raise_nofile(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    if want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
            return want
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class RedisProcess:
    """A redis-server of the benchmark's own on a free port of 127.0.0.1 (a benchmark never
    touches a Redis it did not start), with no persistence, stopped by :meth:`stop`."""

    def __init__(self, cpu: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not on PATH (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="gamegw-bench-redis-")
        self.port = free_port_block(1)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self.dir, "--maxclients", "20000"]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SetupError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port_block(n: int) -> int:
    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n < 65000 and all(free(base + k) for k in range(n)):
            return base
    raise SetupError("no block of free ports on 127.0.0.1")


class Gateway:
    """One `gamectl serve` process on 127.0.0.1, in its own process group, stderr to a log file."""

    def __init__(self, port: int, secret: str, config: Path, cpu: int | str | None, redis: str | None = None,
                 prefix: str | None = None, logdir: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        """``cpu``: what taskset -c takes (2, or "0,1"); ``extra``: more `serve` arguments."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        cmd = [gamectl_path(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port), *extra]
        if redis:
            cmd += ["--redis", redis]
        env = dict(os.environ, GAMEGW_JWT_SECRET=secret, GAMEGW_INSTANCE_ID=f"bench-{port}")
        if prefix:
            env["GAMEGW_REDIS_PREFIX"] = prefix
        self._spawn(cmd, cpu, env, (logdir or Path(tempfile.gettempdir())) / f"gamegw-bench-gateway-{port}.log")

    def _spawn(self, cmd: list[str], cpu: int | str | None, env: dict[str, str], log_path: Path) -> None:
        """Start ``cmd`` (pinned to ``cpu``) in its own process group, its output to ``log_path``."""
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.log = log_path
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, cwd=REPO)

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
                why = next((ln for ln in reversed(lines) if ln.lower().startswith("error")), lines[-1] if lines else "")
                raise SetupError(f"gateway on port {self.port} exited with {self.proc.returncode}: "
                                 f"{why or 'no output'} (log {self.log})")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SetupError(f"gateway on port {self.port} not ready after {timeout:.0f} s (log {self.log})")

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class NodeServer(Gateway):
    """The Node reference server (peer-bench's ``reference_server.js``: socket.io 4, the /game
    namespace, a JWT at the handshake) in place of a gateway, on ``PING_MS`` / ``PING_TIMEOUT_MS``."""

    SCRIPT = HERE / "peer-bench" / "node" / "reference_server.js"
    CLUSTER = HERE / "node" / "reference_cluster.js"  # the same server in several processes (node:cluster)

    def __init__(self, port: int, secret: str, cpu: int | str | None, *, ping_ms: int, ping_timeout_ms: int,
                 logdir: Path | None = None, workers: int = 1, redis: str | None = None) -> None:
        """``workers`` > 1: that many processes on the port (``reference_cluster.js``), over the
        Redis adapter when ``redis`` is given, as a Node deployment with several processes runs."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_line = "listening on" if workers == 1 else f"cluster: {workers} workers listening"
        env = dict(os.environ, NODE_PATH=str(node_modules()), BENCH_SECRET=secret, PORT=str(port),
                   PING_MS=str(ping_ms), PING_TIMEOUT_MS=str(ping_timeout_ms), WORKERS=str(workers),
                   REFERENCE=str(self.SCRIPT), **({"REDIS_URL": redis} if redis else {}))
        self._spawn(["node", str(self.SCRIPT if workers == 1 else self.CLUSTER)], cpu, env,
                    (logdir or Path(tempfile.gettempdir())) / f"gamegw-bench-node-{port}.log")

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SetupError(f"the Node reference server exited with {self.proc.returncode} (log {self.log})")
            if self.ready_line in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise SetupError(f"the Node reference server is not listening after {timeout:.0f} s (log {self.log})")


def start_server(name: str, secret: str, config: Path, cpu: int | None, *, ping_ms: int,
                 ping_timeout_ms: int, processes: int = 1, redis: str | None = None) -> Gateway:
    """A ready server on a free port: ``gamegw`` (a gateway with ``config``) or ``node`` (the Node
    reference server), both on the heartbeat given. ``processes`` > 1: that many processes behind
    the port, over ``redis`` (``gamectl serve --workers``; Node's cluster with the Redis adapter)."""
    if name == "node":
        server: Gateway = NodeServer(free_port_block(1), secret, cpu, ping_ms=ping_ms, ping_timeout_ms=ping_timeout_ms,
                                     workers=processes, redis=redis if processes > 1 else None)
    else:
        os.environ["GAMEGW_PING_INTERVAL_S"] = str(ping_ms / 1000)
        os.environ["GAMEGW_PING_TIMEOUT_S"] = str(ping_timeout_ms / 1000)
        extra = ("--workers", str(processes)) if processes > 1 else ()
        server = Gateway(free_port_block(1), secret, config, cpu, redis=redis if processes > 1 else None,
                         prefix=f"bench-{secrets.token_hex(4)}" if processes > 1 else None, extra=extra)
    server.wait_ready()
    return server


def server_options(ap: Any) -> None:
    """The options of a benchmark that runs the gateway and the Node reference server in turn."""
    ap.add_argument("--servers", default="gamegw,node", type=_servers,
                    help="the servers to measure, in turn: gamegw, node (default both)")
    ap.add_argument("--ping-ms", type=int, default=10000, help="both servers' ping interval (default 10000)")
    ap.add_argument("--ping-timeout-ms", type=int, default=5000, help="both servers' ping timeout (default 5000)")


def _servers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or set(names) - {"gamegw", "node"}:
        raise argparse.ArgumentTypeError("takes gamegw, node or both")
    return names


def beside(key: str) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    """A table cell: a row's figure, with its ratio to the last row's (Node's, when it ran)."""
    return lambda r, n: f"{r[key]}" + (f" ({r[key] / n[key]:.2f}x)" if n[key] else "")


Figure = tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]  # a label, a cell (row, last row)


# the lines both benchmarks that run the gateway and Node side by side print
CONNECTIONS: Figure = ("connections", lambda r, n: f"{r['connected']}/{r['clients']} ({r['failures']} failed)")
SERVER_RSS: Figure = ("server RSS before -> after, MB",
                      lambda r, n: f"{r['server_rss_before_kb'] >> 10} -> {r['server_rss_after_kb'] >> 10}")


def side_by_side(rows: list[dict[str, Any]], figures: list[Figure]) -> str:
    """One column per server (``rows``), one line per figure."""
    return table([("", "  ".join(f"{r['server']:>22}" for r in rows))] + [
        (label, "  ".join(f"{cell(r, rows[-1]):>22}" for r in rows)) for label, cell in figures])


class NodeProc:
    """A node script in its own process group (pinned when cpu is given); JSON lines out, commands in."""

    def __init__(self, script: Path, argv: list[str], secret: str, cpu: int | str | None,
                 env: dict[str, str] | None = None) -> None:
        cmd = ["node", str(script), *argv]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        full_env = dict(os.environ, NODE_PATH=str(node_modules()), BENCH_SECRET=secret, **(env or {}))
        self.name = script.name
        self.proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, phase: str, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise SetupError(f"{self.name} gave no '{phase}' line within {timeout:.0f} s") from None
            if line is None:
                raise SetupError(f"{self.name} exited ({self.proc.wait()}) before its '{phase}' line")
            try:
                msg: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if msg.get("phase") == phase:
                return msg

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, wait: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)


def on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run_and_report(name: str, run: Callable[[Any], dict[str, Any]], args: Any) -> tuple[int, dict[str, Any] | None]:
    """Run a benchmark: one-line errors (exit 1, or 130 on Ctrl-C), else print its JSON line.

    Returns (exit code, result); the caller prints its table when the result is not None.
    """
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = run(args)
    except SetupError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130, None
    print(json.dumps(result), flush=True)
    print()
    return 0, result
