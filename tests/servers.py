"""Private servers for fault tests: a Redis of our own, a cuttable TCP proxy.

Fault tests never stop or kill the shared services (``tests/services.py``): a proxy in front of
one is cut instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, *, open_: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if open_:
                    return
        except OSError:
            if not open_:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not become {'open' if open_ else 'closed'}")


class PrivateRedis:
    """A ``redis-server`` on a free port with its own directory; stop, kill, restart at will."""

    def __init__(self, *, appendonly: bool = False, options: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="al-redis-")
        self.appendonly = appendonly
        # more ``redis-server`` arguments, kept across restarts (``CONFIG SET`` is not), e.g.
        # ``("--appendfsync", "always")``; ``--enable-debug-command`` can only be set this way
        self.options = tuple(options)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log"), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None
        wait_port(self.port, open_=False)

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_redis(*, appendonly: bool = False) -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new ones
    until ``restore()``. Lets a test take PostgreSQL or Redis away without touching the server."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.1)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True)
        self._thread.start()

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set() and not self._cut.is_set():
            try:
                client, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # stalled: hold the bytes, answer nothing, reset nothing
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop all connections and stop listening (new connections are refused)."""
        self._cut.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def stall(self) -> None:
        """A network blackhole: connections stay open and bytes are taken, but nothing is
        forwarded in either direction until ``heal()`` (then the held bytes go through)."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        """Listen again on the same port."""
        self._cut.clear()
        self._listen()

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        self.cut()


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` nodes (no replicas) on free ports, each with its own
    directory: ``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``.
    ``url`` is the ``redis+cluster://`` URL of the first node (the others are discovered)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [PrivateRedis(options=("--cluster-enabled", "yes",
                                            "--cluster-node-timeout", "2000"))
                      for _ in range(masters)]
        for node in self.nodes:
            node.port = _free_cluster_port()
            node.options += ("--cluster-config-file", os.path.join(node.dir, "nodes.conf"))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:  # every node must agree that all slots are served
            states = [subprocess.run([cli, "-p", str(n.port), "cluster", "info"], check=True,
                                     capture_output=True, text=True, timeout=5).stdout
                      for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster did not become ok: {states}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextlib.contextmanager
def private_redis_cluster(masters: int = 3) -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster(masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
