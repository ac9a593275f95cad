"""Real storage servers on localhost for the DVC remote tests (tests/test_remote.py).

:class:`SshServer` is Debian's OpenSSH ``sshd`` on a free port, with a host key and a client key
generated for the test (``.ci/run`` installs ``openssh-server``); :class:`S3Server` is moto's S3
server (``moto[server]``), a real HTTP endpoint. :class:`Throttle` is a TCP relay in front of a
server that passes the client's bytes at a set rate, so that a test can kill the server while a
transfer is under way.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"
S3_BUCKET = "musicgen-dvc"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    """Returns once something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILLs ``proc`` and every process it started (sshd's per-connection processes leave its
    process group), by their ids, then reaps ``proc``."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait()


class SshServer:
    """OpenSSH's sshd on 127.0.0.1, accepting the current user with a generated key only.

    Args:
        root: An empty folder for its keys, config and log.
        port: The port to listen on (a free one by default); a restarted server keeps it.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port, self.user = root, port or free_port(), getpass.getuser()
        self.key = root / "client_key"
        self.proc: subprocess.Popen | None = None
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
            )
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        (root / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nMaxSessions 64\nMaxStartups 64\n"
            "Subsystem sftp internal-sftp\n"
        )

    def start(self) -> SshServer:
        if os.geteuid() == 0:  # sshd started by root wants its privilege separation folder
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - the server's, closed with it
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log
        )
        log.close()
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: the listener and every session, mid-transfer or not."""
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None

    def url(self, path: Path, port: int | None = None) -> str:
        """The DVC remote URL of ``path`` on this server (through ``port``, e.g. a throttle's)."""
        return f"ssh://{self.user}@127.0.0.1:{port or self.port}{path}"


class S3Server:
    """moto's S3 server on 127.0.0.1 (``moto_server``), with the bucket ``S3_BUCKET``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        log = open(self.root / "moto.log", "ab")  # noqa: SIM115 - the server's, closed with it
        self.proc = subprocess.Popen(
            [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for_port(self.port)
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **S3_CREDENTIALS).create_bucket(
            Bucket=S3_BUCKET
        )
        return self

    def kill(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None


S3_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


class Throttle:
    """A TCP relay from a free port to ``upstream``, passing the client's bytes at ``rate`` bytes
    per second (the server's replies pass at once).

    Args:
        upstream: The server's port on 127.0.0.1.
        rate: Bytes per second from client to server; None (or setting ``.rate`` to None later,
            for the connections open then too): no limit.
    """

    def __init__(self, upstream: int, rate: float | None) -> None:
        self.upstream, self.rate = upstream, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for s in (client, server):  # no Nagle: SFTP's small requests would wait on ACKs
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while data := src.recv(1 << 18):
                dst.sendall(data)
                if throttled and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()
