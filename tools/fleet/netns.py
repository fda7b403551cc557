"""Simulated hosts for tools/fleet: one network namespace per host (`esf-NAME`), a veth `eth0`
each into a bridge in the switch namespace `esf-sw`, addresses 10.77.0.0/24, no default route.
The route check (`ip -n SRC route get ADDR` must say `dev eth0`, no gateway) runs before anything
is sent; every process started is tracked and ended, and the namespaces deleted, on any exit.
"""

import atexit
import os
import signal
import subprocess
import sys
import time
import urllib.parse

PREFIX = "esf-"
SUBNET = "10.77.0"
SWITCH = PREFIX + "sw"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sh(*cmd, check=True, capture=False):
    r = subprocess.run(cmd, check=check, text=True,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None)
    return r.stdout if capture else r.returncode


class Proc:
    def __init__(self, name, host, popen, logpath):
        self.name, self.host, self.popen, self.log = name, host, popen, logpath

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None


class Fleet:
    """Namespaces, veths, processes; everything undone by teardown()."""

    def __init__(self, work, earshot):
        self.work, self.earshot = work, earshot
        self.hosts = {}  # name -> ip
        self.procs = []
        self.next_octet = 2
        self.down = False
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)
        atexit.register(self.teardown)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._cleanup_stale()
        sh("ip", "netns", "add", SWITCH)
        sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", SWITCH, "link", "set", "br0", "up")
        sh("ip", "-n", SWITCH, "link", "set", "lo", "up")

    def _on_signal(self, signum, _frame):
        log(f"signal {signum}: tearing down")
        self.teardown()
        os._exit(128 + signum)

    @staticmethod
    def _cleanup_stale():
        for line in sh("ip", "netns", "list", capture=True).splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(PREFIX):
                log(f"removing stale namespace {ns} (a previous run did not finish)")
                sh("ip", "netns", "del", ns, check=False)

    def host(self, name):
        """Creates host `name` (namespace esf-NAME, eth0 on the bridge) and returns its address."""
        if name in self.hosts:
            return self.hosts[name]
        ns = PREFIX + name
        ip = f"{SUBNET}.{self.next_octet}"
        self.next_octet += 1
        # Interface names are ≤ 15 bytes: number the veths.
        a, b = f"esfa{self.next_octet}", f"esfb{self.next_octet}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", SWITCH)
        sh("ip", "link", "set", b, "netns", ns)
        sh("ip", "-n", SWITCH, "link", "set", a, "master", "br0")
        sh("ip", "-n", SWITCH, "link", "set", a, "up")
        sh("ip", "-n", ns, "link", "set", b, "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = ip
        return ip

    def check_route(self, src, dst_ip):
        """Aborts unless src's namespace reaches dst_ip directly over its own eth0."""
        if not dst_ip.startswith(SUBNET + ".") or dst_ip not in self.hosts.values():
            raise SystemExit(f"refusing to send to {dst_ip}: not one of this harness's hosts")
        out = sh("ip", "-n", PREFIX + src, "route", "get", dst_ip, capture=True)
        words = out.split()
        if "dev" not in words or words[words.index("dev") + 1] != "eth0" or "via" in words:
            raise SystemExit(f"ABORT: route from {src} to {dst_ip} is not over the harness veth: {out!r}")
        return out.strip()

    def check_all_routes(self):
        for src in self.hosts:
            for dst in self.hosts.values():
                if dst != self.hosts[src]:
                    self.check_route(src, dst)

    def spawn(self, name, host, cmd, env=None):
        path = os.path.join(self.work, "logs", f"{name}.log")
        f = open(path, "ab")
        f.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        f.flush()
        # `ip netns exec` execs the command: the PID is the process itself.
        p = subprocess.Popen(["ip", "netns", "exec", PREFIX + host] + cmd, stdout=f,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc = Proc(name, host, p, path)
        self.procs.append(proc)
        return proc

    def run(self, host, cmd, timeout, env=None):
        """Runs a bounded command in a host; returns its stdout."""
        r = subprocess.run(["ip", "netns", "exec", PREFIX + host] + cmd, text=True,
                           stdout=subprocess.PIPE, stderr=sys.stderr, timeout=timeout, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{cmd[:3]}… in {host} exited {r.returncode}")
        return r.stdout

    def stop(self, proc, sig=signal.SIGTERM, wait=10):
        if proc.alive():
            os.kill(proc.pid, sig)
            try:
                proc.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    def wait_http(self, src, url, path="/readyz", timeout=120):
        u = urllib.parse.urlsplit(url)
        self.check_route(src, u.hostname)
        end = time.time() + timeout
        while time.time() < end:
            r = subprocess.run(["ip", "netns", "exec", PREFIX + src, "curl", "-s", "-o", "/dev/null",
                                "-w", "%{http_code}", "--max-time", "2", url + path],
                               text=True, stdout=subprocess.PIPE)
            if r.stdout.strip() == "200":
                return
            time.sleep(0.3)
        raise SystemExit(f"{url}{path} not ready within {timeout} s")

    def wait_port(self, src, url, timeout=60):
        """Waits until anything answers HTTP at url (any status)."""
        self.check_route(src, urllib.parse.urlsplit(url).hostname)
        end = time.time() + timeout
        while time.time() < end:
            r = subprocess.run(["ip", "netns", "exec", PREFIX + src, "curl", "-s", "-o", "/dev/null",
                                "--max-time", "2", url], stdout=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.3)
        raise SystemExit(f"{url} not answering within {timeout} s")

    def teardown(self):
        if self.down:
            return
        self.down = True
        for p in self.procs:
            if p.alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.time() + 5
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.popen.wait(timeout=5)
        for name in list(self.hosts) + ["sw"]:
            sh("ip", "netns", "del", PREFIX + name, check=False)
        log("fleet torn down")
