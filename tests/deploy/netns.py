"""Hosts for the deployment test: one network namespace per host on a bridge, each with its own
directory, /etc/hosts (via /etc/netns/<ns>/hosts, which `ip netns exec` mounts) and addresses
from a 10.231.N.0/24 no route on this machine uses. Everything made here is removed by `close()`,
which the fixture calls in a `finally`, also when a step fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCP_SHIM = REPO / "packaging" / "scp-local"  # the same stand-in the compose setup uses


def available() -> str | None:
    """None when namespaces can be made here, else why not (for the loud banner)."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed (.ci/run installs it with apt-get)"
    probe = f"xdprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _free_subnet() -> int:
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    for _ in range(50):
        n = secrets.randbelow(250) + 1
        if f"10.231.{n}." not in routes:
            return n
    raise RuntimeError("no free 10.231.N.0/24 subnet")


@dataclass
class Host:
    name: str  # ca, gateway, tax, ..., client
    fqdn: str
    address: str
    netns: str | None  # None: runs in the root namespace (the offline CA has no network)
    home: Path
    veth: str = ""  # the root-side end of its link (taken down to cut the host off)


@dataclass
class Network:
    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = field(default_factory=_free_subnet)
    hosts: dict[str, Host] = field(default_factory=dict)
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _switch: str = ""
    _made_netns: list[str] = field(default_factory=list)

    def build(self, names: dict[str, str]) -> None:
        """names: host -> fully qualified name; "ca" gets a directory but no namespace.

        The bridge and every host's outer veth end live in a namespace of their own (the switch),
        so this machine's own namespace sees no new link or address: a browser on this machine
        (Chromium aborts navigations with ERR_NETWORK_CHANGED on any address change) and other
        tests are undisturbed while the federation is built and its links go down and up.
        """
        self._switch = f"xd{self.tag}-switch"[:15]
        _ip("netns", "add", self._switch)
        self._made_netns.append(self._switch)
        _ip("-n", self._switch, "link", "add", "name", "bridge0", "type", "bridge")
        _ip("-n", self._switch, "link", "set", "bridge0", "up")
        bin_dir = self.root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SCP_SHIM, bin_dir / "scp")
        (bin_dir / "scp").chmod(0o755)
        for i, (name, fqdn) in enumerate(names.items(), start=10):
            home = self.root / name
            home.mkdir(parents=True, exist_ok=True)
            if name == "ca":
                self.hosts[name] = Host(name, fqdn, "", None, home)
                continue
            ns, outer, inner = f"xd{self.tag}-{name}"[:15], f"h{i}", f"xd{self.tag}{i}p"
            _ip("netns", "add", ns)
            self._made_netns.append(ns)
            # Made inside the switch, the inner end moved straight to the host: never in ours.
            _ip("-n", self._switch, "link", "add", "name", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            _ip("-n", self._switch, "link", "set", outer, "master", "bridge0", "up")
            address = f"10.231.{self.subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.hosts[name] = Host(name, fqdn, address, ns, home, outer)
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h.address} {h.fqdn}\n" for h in self.hosts.values() if h.address
        )
        for host in self.hosts.values():
            if host.netns is not None:
                etc = Path("/etc/netns") / host.netns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(hosts_file)
        (self.root / "hosts.map").write_text("".join(f"{h.fqdn}={h.home}\n" for h in self.hosts.values()))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.root / 'bin'}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),  # this checkout's code, whichever venv runs it
            "XGATE_DEPLOY_HOSTS": str(self.root / "hosts.map"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "HOME": str(self.root),
            **(extra or {}),
        }

    def _argv(self, host: Host, script: str) -> list[str]:
        shell = ["bash", "-euo", "pipefail", "-c", script]
        return ["ip", "netns", "exec", host.netns, *shell] if host.netns else shell

    def run(self, host: str, script: str, extra: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        h = self.hosts[host]
        return subprocess.run(self._argv(h, script), cwd=h.home, env=self.env(extra), capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def start(self, host: str, script: str, log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        h = self.hosts[host]
        out = log.open("wb")
        proc = subprocess.Popen(self._argv(h, "exec " + script.strip()), cwd=h.home, env=self.env(extra),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.services.append(proc)
        return proc

    def link(self, host: str, up: bool) -> None:
        _ip("-n", self._switch, "link", "set", self.hosts[host].veth, "up" if up else "down")

    def close(self) -> list[str]:
        """Stop our services, delete our namespaces, links and /etc/netns entries; return what failed."""
        problems: list[str] = []
        for proc in self.services:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the session we started for this service only
        for proc in self.services:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for ns in reversed(self._made_netns):  # the hosts, then the switch (its bridge and veths go with it)
            result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
            for pid in result.stdout.split():
                os.kill(int(pid), signal.SIGKILL)  # anything left inside our own namespace
            if subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False).returncode != 0:
                problems.append(f"netns {ns}")
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        return problems
