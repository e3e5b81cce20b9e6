#!/usr/bin/env python3
"""regate vs its peers on this machine, same data, same run. Run through benches/compare.sh.

Peers, all on 127.0.0.1 and started here:
  regate        TLS on (self-signed cert), token auth on (htpasswd user, ES256 JWTs), access log on
                (stderr to a file), fs storage with its default fsync: true.
  distribution  Debian's docker-registry (2.8), plain HTTP, no auth, its default access log.
  nginx+auth    Debian's nginx terminating TLS with nginx-compat/auth-request.conf: auth_request to
                a second regate (plain HTTP, memory storage, /nginx/auth + /token only) in front of
                a second docker-registry. The stack regate replaces.
Clients: curl (blob push/pull), the standard library (chunked push, 5 GiB stream), skopeo, and
benches/tools/loadgen.rs (manifest GET/HEAD and /token; wrk 4.1 cannot do HEAD).
"""
import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

MiB = 1 << 20
GiB = 1 << 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "bench", "bench-password-0123"
SERVICE = "bench.regate"
MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"


def log(*a):
    print("compare:", *a, file=sys.stderr, flush=True)


def free_port():
    # docker-registry and nginx cannot listen on port 0: pick one and release it (bench only)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Proc:
    def __init__(self, name, cmd, logfile, port, cwd=None):
        self.name, self.cmd, self.logfile, self.port, self.cwd = name, cmd, logfile, port, cwd
        self.p = None

    def start(self):
        out = open(self.logfile, "ab")
        self.p = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                  stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            if self.p.poll() is not None:
                sys.exit(f"compare: {self.name} exited at start; see {self.logfile}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.time() > deadline:
                    sys.exit(f"compare: {self.name} does not listen on {self.port}; see {self.logfile}")
                time.sleep(0.05)

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def restart(self):
        self.stop()
        return self.start()

    @property
    def pid(self):
        return self.p.pid


class Peer:
    def __init__(self, name, scheme, port, auth_port=None, proc=None):
        self.name, self.scheme, self.port = name, scheme, port
        self.auth_port = auth_port  # where /token is asked (None: no auth)
        self.proc = proc  # the process whose memory is reported
        self.tokens = {}
        self.ctx = None
        if scheme == "https":
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE

    @property
    def base(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def conn(self, timeout=600):
        if self.ctx:
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                               timeout=timeout, blocksize=MiB)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, blocksize=MiB)

    def basic(self):
        return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def token_path(self, repo):
        q = urllib.parse.urlencode({"service": SERVICE, "scope": f"repository:{repo}:pull,push"})
        return f"/token?{q}"

    def auth(self, repo):
        """the Authorization header a client holding a token for repo sends (None: no auth)"""
        if self.auth_port is None:
            return None
        if repo not in self.tokens:
            c = self.conn()
            c.request("GET", self.token_path(repo), headers={"Authorization": self.basic()})
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                sys.exit(f"compare: {self.name} /token answered {r.status}: {body[:200]!r}")
            self.tokens[repo] = "Bearer " + json.loads(body)["token"]
        return self.tokens[repo]

    def headers(self, repo, extra=None):
        h = dict(extra or {})
        a = self.auth(repo)
        if a:
            h["Authorization"] = a
        return h

    def request(self, method, path, repo, body=None, headers=None, conn=None, expect=None):
        c = conn or self.conn()
        c.request(method, path, body=body, headers=self.headers(repo, headers))
        r = c.getresponse()
        data = r.read()
        if expect and r.status not in expect:
            sys.exit(f"compare: {self.name} {method} {path} answered {r.status}: {data[:300]!r}")
        return r, data


def rel(location):
    u = urllib.parse.urlsplit(location)
    return u.path + ("?" + u.query if u.query else "")


def with_digest(path, digest):
    return path + ("&" if "?" in path else "?") + "digest=" + urllib.parse.quote(digest, safe="")


def start_upload(peer, repo, conn=None):
    r, _ = peer.request("POST", f"/v2/{repo}/blobs/uploads/", repo, headers={"Content-Length": "0"},
                        conn=conn, expect=(202,))
    return rel(r.getheader("Location"))


# HTTP/1.1 by default for the curl rows: Debian's curl 7.88 spends 3x the CPU of an HTTP/1.1
# upload on an h2 one (measured: 1.14 s against 0.36 s for 512 MiB), and on 2 cores that is the
# client measuring itself. --h2 lets curl negotiate h2 over TLS (ALPN) as docker would.
CURL_HTTP = ["--http1.1"]


def curl_base(peer, repo):
    cmd = ["curl", "-sS", *CURL_HTTP, "--fail-with-body", "-o", "/dev/null",
           "-w", "%{http_code} %{size_download} %{time_total}"]
    if peer.scheme == "https":
        cmd.append("-k")
    a = peer.auth(repo)
    if a:
        cmd += ["-H", f"Authorization: {a}"]
    return cmd


# ---------------------------------------------------------------- workloads


def push_monolithic(peer, repo, path, digest, size):
    t0 = time.perf_counter()
    loc = start_upload(peer, repo)
    cmd = curl_base(peer, repo) + ["-X", "PUT", "-T", path, "-H", "Expect:",
                                    "-H", "Content-Type: application/octet-stream",
                                    peer.base + with_digest(loc, digest)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0 or not out.stdout.startswith("201"):
        sys.exit(f"compare: {peer.name} monolithic PUT failed: {out.stdout} {out.stderr}")
    return size / MiB / dt


def push_chunked(peer, repo, path, digest, size, chunk):
    c = peer.conn()
    t0 = time.perf_counter()
    loc = start_upload(peer, repo, conn=c)
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            data = os.pread(fd, min(chunk, size - off), off)
            h = {"Content-Type": "application/octet-stream",
                 "Content-Range": f"{off}-{off + len(data) - 1}"}
            r, body = peer.request("PATCH", loc, repo, body=data, headers=h, conn=c)
            if r.status != 202:
                sys.exit(f"compare: {peer.name} PATCH at {off} answered {r.status}: {body[:300]!r}")
            loc = rel(r.getheader("Location"))
            off += len(data)
    finally:
        os.close(fd)
    peer.request("PUT", with_digest(loc, digest), repo, body=b"", conn=c, expect=(201,))
    return size / MiB / (time.perf_counter() - t0)


def pull(peer, repo, digest, size, streams):
    url = f"{peer.base}/v2/{repo}/blobs/{digest}"
    t0 = time.perf_counter()
    ps = [subprocess.Popen(curl_base(peer, repo) + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for _ in range(streams)]
    for p in ps:
        out, err = p.communicate()
        if p.returncode != 0 or not out.startswith("200") or int(out.split()[1]) != size:
            sys.exit(f"compare: {peer.name} blob GET failed: {out} {err}")
    return streams * size / MiB / (time.perf_counter() - t0)


def put_blob(peer, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = start_upload(peer, repo)
    peer.request("PUT", with_digest(loc, d), repo, body=data,
                 headers={"Content-Type": "application/octet-stream"}, expect=(201,))
    return d


def put_manifest(peer, repo, tag, layer_digest, layer_size):
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    cd = put_blob(peer, repo, cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_MT,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd,
                                 "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                                  "size": layer_size}]}).encode()
    peer.request("PUT", f"/v2/{repo}/manifests/{tag}", repo, body=man,
                 headers={"Content-Type": MANIFEST_MT}, expect=(201,))


def load(loadgen, url, headers, method, conns, duration, ca):
    """closed-loop load with benches/tools/loadgen.rs (keep-alive HTTP/1.1, TLS checked against ca)"""
    cmd = [loadgen, "--url", url, "--method", method, "-c", str(conns), "-t", str(min(conns, 2)),
           "-d", str(duration)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if url.startswith("https://"):
        cmd += ["--ca", ca]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"compare: loadgen failed on {url}: {out.stdout} {out.stderr}")
    res = json.loads(out.stdout)
    res["errors"] = res["errors"] + res["non2xx"]
    if res["errors"]:
        log(f"{method} {url} c={conns}: {res['errors']} errors / non-2xx answers of {res['requests']}"
            f" (statuses {res.get('statuses', {})}, failures {res.get('failures', {})})")
    return res


def skopeo(args):
    t0 = time.perf_counter()
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"compare: skopeo {' '.join(args)} failed: {out.stderr[-800:]}")
    return time.perf_counter() - t0


def creds_args(peer, flag):
    return [flag, f"{USER}:{PASSWORD}"] if peer.auth_port else []


def stream_rss(peer, repo, total, workdir):
    """restart the peer's process, then stream `total` bytes in (one PATCH) and out (one GET)
    while sampling its RSS; returns idle and peak RSS (MiB) and both rates (MiB/s)"""
    proc = peer.proc
    proc.restart()
    peer.tokens.clear()
    time.sleep(2)
    idle = proc_status(proc.pid, "VmRSS")
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            v = proc_status(proc.pid, "VmRSS")
            if v:
                peak[0] = max(peak[0], v)
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    block = os.urandom(16 * MiB)
    try:
        c = peer.conn()
        loc = start_upload(peer, repo, conn=c)
        h = hashlib.sha256()
        c.putrequest("PATCH", loc)
        for k, v in peer.headers(repo, {"Content-Type": "application/octet-stream",
                                        "Content-Length": str(total)}).items():
            c.putheader(k, v)
        c.endheaders()
        t0 = time.perf_counter()
        sent, i = 0, 0
        while sent < total:
            # vary each block a little so the stream does not repeat
            n = min(len(block), total - sent)
            piece = i.to_bytes(8, "little") + block[8:n] if n > 8 else block[:n]
            h.update(piece)
            c.send(piece)
            sent += n
            i += 1
        r = c.getresponse()
        body = r.read()
        if r.status != 202:
            sys.exit(f"compare: {peer.name} streaming PATCH answered {r.status}: {body[:300]!r}")
        digest = "sha256:" + h.hexdigest()
        peer.request("PUT", with_digest(rel(r.getheader("Location")), digest), repo, body=b"", conn=c,
                     expect=(201,))
        t_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.request("GET", f"/v2/{repo}/blobs/{digest}", headers=peer.headers(repo))
        r = c.getresponse()
        if r.status != 200:
            sys.exit(f"compare: {peer.name} streaming GET answered {r.status}")
        buf = bytearray(MiB)
        got = 0
        while True:
            n = r.readinto(buf)
            if not n:
                break
            got += n
        t_out = time.perf_counter() - t0
        if got != total:
            sys.exit(f"compare: {peer.name} streamed back {got} of {total} bytes")
    finally:
        stop.set()
        th.join()
    hwm = proc_status(proc.pid, "VmHWM") or peak[0]
    return {"idle_rss_mib": idle / MiB, "stream_peak_rss_mib": max(hwm, peak[0]) / MiB,
            "stream_in_mibps": total / MiB / t_in, "stream_out_mibps": total / MiB / t_out}


# ---------------------------------------------------------------- setup


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def disk_write_rate(work):
    path = os.path.join(work, "dd.bin")
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024", "conv=fdatasync"],
                   check=True, capture_output=True)
    dt = time.perf_counter() - t0
    os.unlink(path)
    return 1024 / dt


def distribution(work, name):
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d)
    cfg = write(os.path.join(d, "config.yml"),
                f"version: 0.1\nlog: {{ level: info }}\nstorage:\n  filesystem: {{ rootdirectory: {d}/root }}\n"
                f"  delete: {{ enabled: true }}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    return Proc(name, ["docker-registry", "serve", cfg], os.path.join(d, "log.txt"), port)


def regate_proc(regate, work, name, port, extra):
    d = os.path.join(work, name)
    os.makedirs(d)
    cfg = write(os.path.join(d, "regate.yaml"),
                f"listen: 127.0.0.1:{port}\n{extra}"
                f"auth: {{ htpasswd: {work}/htpasswd, service: {SERVICE}, token_ttl: 3600 }}\n"
                f"access:\n  - {{ account: {USER}, repository: \"*\", actions: [pull, push, delete] }}\n"
                # the per-address token rate limit (default 500/s) would cap the /token workload
                f"limits: {{ token_requests_per_second: 0 }}\n")
    return Proc(name, [regate, "serve", "--config", cfg], os.path.join(d, "log.txt"), port, cwd=d)


def sha256_rate(path):
    """one core's SHA-256 rate over a file already in the page cache (OpenSSL, SHA-NI where the CPU
    has it): every pushed byte must be hashed once to check the digest, so this bounds one push"""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
            n += len(b)
        return n / MiB / (time.perf_counter() - t0)


def nginx_static_tls(work, port, root):
    """nginx serving a directory over TLS: the fastest TLS file server at hand, the ceiling a TLS
    pull reaches on this machine with curl as the client (it cannot use sendfile either)"""
    d = os.path.join(work, "nginx-static")
    os.makedirs(os.path.join(d, "logs"))
    # as root, nginx's workers would run as nobody, who cannot read the private work directory
    conf = (("user root;\n" if os.geteuid() == 0 else "") + f"worker_processes auto;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {work}/tls.crt; "
            f"ssl_certificate_key {work}/tls.key; root {root}; }} }}\n")
    path = write(os.path.join(d, "nginx.conf"), conf)
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    return Proc("nginx-static", [nginx, "-p", d, "-c", path, "-g", "daemon off;"],
                os.path.join(d, "stderr.txt"), port)


def static_pull(port, name, size, streams):
    url = f"https://127.0.0.1:{port}/{name}"
    t0 = time.perf_counter()
    ps = [subprocess.Popen(["curl", "-sS", *CURL_HTTP, "-k", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
                            url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(streams)]
    for p in ps:
        out, err = p.communicate()
        if p.returncode != 0 or int(out) != size:
            sys.exit(f"compare: nginx static GET failed: {out} {err}")
    return streams * size / MiB / (time.perf_counter() - t0)


def nginx_proc(work, port, registry_port, regate_port):
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "logs"))
    conf = open(os.path.join(REPO_ROOT, "nginx-compat", "auth-request.conf")).read()
    for a, b in [("listen 443 ssl", f"listen 127.0.0.1:{port} ssl"),
                 ("/etc/nginx/tls/reg.crt", f"{work}/tls.crt"),
                 ("/etc/nginx/tls/reg.key", f"{work}/tls.key"),
                 ("/var/log/nginx/", f"{d}/logs/"),
                 ("/run/nginx-registry.pid", f"{d}/nginx.pid"),
                 ("server 127.0.0.1:5000", f"server 127.0.0.1:{registry_port}"),
                 ("server 127.0.0.1:5001", f"server 127.0.0.1:{regate_port}")]:
        if a not in conf:
            sys.exit(f"compare: nginx-compat/auth-request.conf no longer contains {a!r}")
        conf = conf.replace(a, b)
    path = write(os.path.join(d, "nginx.conf"), conf)
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    t = subprocess.run([nginx, "-t", "-p", d, "-c", path], capture_output=True, text=True)
    if t.returncode != 0:
        sys.exit(f"compare: nginx -t: {t.stderr}")
    return Proc("nginx", [nginx, "-p", d, "-c", path, "-g", "daemon off;"], os.path.join(d, "stderr.txt"), port)


# ---------------------------------------------------------------- report

# key, label, unit, higher is better
ROWS = [
    ("push_mono_mibps", "blob push, monolithic", "MiB/s", True),
    ("push_chunked_mibps", "blob push, 5 MiB chunks", "MiB/s", True),
    ("pull_1_mibps", "blob pull, 1 stream", "MiB/s", True),
    ("pull_4_mibps", "blob pull, 4 streams", "MiB/s", True),
]
for _m in ("GET", "HEAD"):
    for _c in (1, 16):
        ROWS += [(f"manifest_{_m.lower()}_c{_c}_rps", f"manifest {_m} by tag, {_c} conn", "req/s", True),
                 (f"manifest_{_m.lower()}_c{_c}_p50_ms", "  p50", "ms", False),
                 (f"manifest_{_m.lower()}_c{_c}_p99_ms", "  p99", "ms", False)]
ROWS += [
    ("token_rps", "/token, warm htpasswd user, 16 conn", "tokens/s", True),
    ("skopeo_push_s", "skopeo push, 5-layer image", "s", False),
    ("skopeo_pull_s", "skopeo pull, 5-layer image", "s", False),
    ("idle_rss_mib", "idle RSS (fresh process)", "MiB", False),
    ("stream_peak_rss_mib", "peak RSS streaming blob in+out", "MiB", False),
    ("stream_in_mibps", "  stream in", "MiB/s", True),
    ("stream_out_mibps", "  stream out", "MiB/s", True),
]
# issue 22: the cost of the trust policy on the hot path (regate only; a second regate with a policy)
for _c in (1, 16):
    ROWS += [(f"manifest_signed_get_c{_c}_rps", f"manifest GET signed, policy on, {_c} conn", "req/s", True),
             (f"manifest_signed_get_c{_c}_p50_ms", "  p50", "ms", False),
             (f"manifest_signed_get_c{_c}_p99_ms", "  p99", "ms", False),
             (f"manifest_nopolicy_get_c{_c}_rps", f"  same server, repo without policy, {_c} conn", "req/s", True)]


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def table(results, meta, names):
    cols = ["figure", "unit"] + names + [f"regate/{n}" for n in names[1:]]
    rows = [[label, "MiB/s", fmt(meta.get(k))] + [""] * (len(cols) - 3) for k, label in (
        ("disk_write_mibps", "disk write ceiling (dd 1 GiB fdatasync, median of 3)"),
        ("sha256_mibps", "sha256 on one core (every pushed byte is hashed)"),
        ("tls_pull_1_mibps", "TLS pull ceiling: nginx static file, 1 stream"),
        ("tls_pull_4_mibps", "TLS pull ceiling: nginx static file, 4 streams"),
    ) if k in meta]
    for key, label, unit, higher in ROWS:
        vals = [results[n].get(key) for n in names]
        row = [label, unit] + [fmt(v) for v in vals]
        for v in vals[1:]:
            row.append(f"{vals[0] / v:.2f}x" if vals[0] is not None and v else "")
        rows.append(row)
    w = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(r))
    out = [line(cols), "  ".join("-" * x for x in w)] + [line(r) for r in rows]
    return "\n".join(out)


def targets(res, meta):
    """issue #6's targets: (what, figure, met); a target whose figures were not measured (--only)
    is left out"""
    r, d, n = res["regate"], res["distribution"], res["nginx+auth"]
    out = []

    def add(what, fig):
        try:
            value, ok = fig()
        except (KeyError, TypeError, ZeroDivisionError):
            return
        out.append({"target": what, "value": value, "met": bool(ok)})

    def ratio(a, b):
        return a / b

    def push():
        x = ratio(r["push_mono_mibps"], d["push_mono_mibps"])
        return f"{x:.2f}x", x >= 1.6

    def chunked():
        x = ratio(r["push_chunked_mibps"], d["push_chunked_mibps"])
        return f"{x:.2f}x", x >= 1.6

    def disk():
        x = ratio(r["push_mono_mibps"], meta["disk_write_mibps"])
        sha = meta.get("sha256_mibps")
        return f"{x:.0%}" + (f" (sha256 on one core: {sha / meta['disk_write_mibps']:.0%} of the disk)" if sha else ""), \
            x >= 0.9

    add("blob push >= 1.6x distribution", push)
    add("blob push, 5 MiB chunks >= 1.6x distribution", chunked)
    add("blob push >= 90% of the disk write rate", disk)
    for k, label in (("pull_1_mibps", "1 stream"), ("pull_4_mibps", "4 streams")):
        def pull(k=k):
            x = ratio(r[k], d[k])
            c = meta.get("tls_" + k)
            return (f"{x:.2f}x" + (f" (the TLS ceiling here is {c / d[k]:.2f}x; regate reaches {r[k] / c:.0%} of it)"
                                   if c else "")), x >= 1.0
        add(f"blob pull ({label}) >= 1.0x distribution, through TLS", pull)
    for m in ("get", "head"):
        for c in (1, 16):
            def man(k=f"manifest_{m}_c{c}_rps"):
                x, y = ratio(r[k], d[k]), ratio(r[k], n[k])
                return f"{x:.1f}x / {y:.1f}x", x >= 10 and y > 1
            add(f"manifest {m.upper()} {c} conn >= 10x distribution and ahead of nginx+auth", man)
    for m in ("get", "head"):
        def p99(m=m):
            added = r[f"manifest_{m}_c16_p99_ms"] - d[f"manifest_{m}_c16_p99_ms"]
            return f"{added:+.2f} ms", added <= 1
        add(f"p99 added over distribution, manifest {m.upper()} 16 conn <= 1 ms", p99)
    add("/token >= 10,000/s (warm user)", lambda: (f"{r['token_rps']:,.0f}/s", r["token_rps"] >= 10000))
    add("peak RSS streaming <= 64 MiB",
        lambda: (f"{r['stream_peak_rss_mib']:.1f} MiB", r["stream_peak_rss_mib"] <= 64))
    add("idle RSS <= 20 MiB", lambda: (f"{r['idle_rss_mib']:.1f} MiB", r["idle_rss_mib"] <= 20))
    return out


WORKLOADS = ["push", "chunked", "pull", "manifest", "token", "skopeo", "stream", "trust"]


def trust_rows(regate, loadgen, work, ca, duration, procs):
    """manifest GET by tag of a cosign-signed image in a repository under `policy:` (signature
    verified once, then cached), with a pull-only token (push tokens are never gated), against the
    same GET in a repository no rule covers, on one regate with TLS and token auth"""
    d = os.path.join(work, "trust-keys")
    os.makedirs(d)
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/k.key"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", f"{d}/k.key", "-pubout", "-out", f"{d}/k.pub"], check=True,
                   capture_output=True)
    port = free_port()
    proc = regate_proc(regate, work, "regate-trust", port,
                       f"public_url: https://127.0.0.1:{port}\n"
                       f"tls: {{ cert: {work}/tls.crt, key: {work}/tls.key }}\n"
                       f"storage: {{ backend: fs, fs: {{ root: {work}/regate-trust/data }} }}\n"
                       f"policy:\n  - repository: \"bench/signed\"\n    require_signature: {{ cosign: [{d}/k.pub] }}\n")
    procs.append(proc)
    proc.start()
    p = Peer("regate-trust", "https", port, auth_port=port, proc=proc)
    layer = os.urandom(4096)
    out = {}
    for repo in ("bench/signed", "bench/plain"):
        ld = put_blob(p, repo, layer)
        put_manifest(p, repo, "v1", ld, len(layer))
    _, man = p.request("GET", "/v2/bench/signed/manifests/v1", "bench/signed",
                            headers={"Accept": MANIFEST_MT}, expect=(200,))
    digest = "sha256:" + hashlib.sha256(man).hexdigest()
    payload = json.dumps({"critical": {"identity": {"docker-reference": f"127.0.0.1:{port}/bench/signed"},
                                       "image": {"docker-manifest-digest": digest},
                                       "type": "cosign container image signature"}, "optional": None}).encode()
    with open(f"{d}/payload", "wb") as f:
        f.write(payload)
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/k.key", "-out", f"{d}/sig", f"{d}/payload"],
                   check=True, capture_output=True)
    with open(f"{d}/sig", "rb") as f:
        sig = base64.b64encode(f.read()).decode()
    pd = put_blob(p, "bench/signed", payload)
    cfg = put_blob(p, "bench/signed", b"{}")
    sm = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_MT,
                     "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
                     "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": pd,
                                 "size": len(payload),
                                 "annotations": {"dev.cosignproject.cosign/signature": sig}}]}).encode()
    p.request("PUT", f"/v2/bench/signed/manifests/{digest.replace(':', '-')}.sig", "bench/signed", body=sm,
              headers={"Content-Type": MANIFEST_MT}, expect=(201,))
    for repo, key in (("bench/signed", "manifest_signed_get"), ("bench/plain", "manifest_nopolicy_get")):
        c = p.conn()
        c.request("GET", "/token?" + urllib.parse.urlencode({"service": SERVICE, "scope": f"repository:{repo}:pull"}),
                  headers={"Authorization": p.basic()})
        h = {"Authorization": "Bearer " + json.loads(c.getresponse().read())["token"], "Accept": MANIFEST_MT}
        c = p.conn()
        c.request("GET", f"/v2/{repo}/manifests/v1", headers=h)
        r = c.getresponse()
        r.read()
        want = "verified" if repo == "bench/signed" else None
        if r.status != 200 or r.getheader("X-Regate-Trust") != want:
            sys.exit(f"compare: {repo} with a pull-only token answered {r.status} {r.getheader('X-Regate-Trust')}")
        for conns in (1, 16):
            w = load(loadgen, f"{p.base}/v2/{repo}/manifests/v1", h, "GET", conns, duration, ca)
            k = f"{key}_c{conns}"
            out.update({f"{k}_rps": w["rps"], f"{k}_p50_ms": w["p50_ms"], f"{k}_p99_ms": w["p99_ms"]})
            if w["errors"]:
                out[f"{k}_errors"] = w["errors"]
    proc.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regate", default=os.path.join(REPO_ROOT, "target/release/regate"))
    ap.add_argument("--loadgen", default=os.path.join(REPO_ROOT, "target/release/examples/loadgen"))
    ap.add_argument("--quick", action="store_true", help="small sizes and short runs (smoke test)")
    ap.add_argument("--dir", help="work directory (default: a new temporary directory, removed at the end)")
    ap.add_argument("--json", help="where to write the JSON (default: target/bench/compare-<time>.json)")
    ap.add_argument("--duration", type=int, help="seconds per load run (default 5, --quick 2)")
    ap.add_argument("--h2", action="store_true",
                    help="curl negotiates h2 over TLS for the blob rows (default: HTTP/1.1 for every peer)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", help="comma-separated workloads to run, of " + ",".join(WORKLOADS) +
                    " (default: all; the monolithic push always runs, as the pull and manifest rows read its blob)")
    a = ap.parse_args()

    if a.h2:
        CURL_HTTP.clear()
    only = set(WORKLOADS if not a.only else a.only.split(","))
    if only - set(WORKLOADS):
        ap.error(f"unknown workloads: {','.join(sorted(only - set(WORKLOADS)))}")
    only.add("push")
    blob = 64 * MiB if a.quick else GiB
    layer_mib = 6 if a.quick else 60
    stream = 256 * MiB if a.quick else 5 * GiB
    duration = a.duration or (2 if a.quick else 5)
    regate = os.path.abspath(a.regate)
    loadgen = os.path.abspath(a.loadgen)
    work = a.dir or tempfile.mkdtemp(prefix="regate-bench-")
    os.makedirs(work, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = a.json or os.path.join(REPO_ROOT, "target", "bench", f"compare-{stamp}.json")
    procs = []
    try:
        log(f"work directory {work}")
        subprocess.run(["htpasswd", "-B", "-b", "-c", f"{work}/htpasswd", USER, PASSWORD], check=True,
                       capture_output=True)
        ca = f"{work}/tls.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth",
                        "-keyout", f"{work}/tls.key", "-out", ca], check=True, capture_output=True)

        log("measuring the disk write ceiling")
        runs = [disk_write_rate(work) for _ in range(3)]  # a virtual disk varies a lot: the median of 3
        meta = {"disk_write_mibps": sorted(runs)[1], "disk_write_runs_mibps": runs}

        log("writing test data")
        blob_a, blob_b = os.path.join(work, "blob-a"), os.path.join(work, "blob-b")
        dig_a, dig_b = random_file(blob_a, blob), random_file(blob_b, blob)
        img = os.path.join(work, "image")
        subprocess.run(["python3", os.path.join(REPO_ROOT, "tests/tools/mkimage.py"), img, "v1"] +
                       [str(layer_mib)] * 5, check=True, capture_output=True)

        meta["sha256_mibps"] = max(sha256_rate(blob_a) for _ in range(2))
        if "pull" in only:
            log("measuring the TLS pull ceiling (nginx serving the blob file over TLS)")
            st = nginx_static_tls(work, free_port(), work)
            st.start()
            try:
                meta["tls_pull_1_mibps"] = static_pull(st.port, "blob-a", blob, 1)
                meta["tls_pull_4_mibps"] = static_pull(st.port, "blob-a", blob, 4)
            finally:
                st.stop()

        log("starting the peers")
        rg_port = free_port()
        rg = regate_proc(regate, work, "regate", rg_port,
                         f"public_url: https://127.0.0.1:{rg_port}\n"
                         f"tls: {{ cert: {work}/tls.crt, key: {work}/tls.key }}\n"
                         f"storage: {{ backend: fs, fs: {{ root: {work}/regate/data }} }}\n")
        dist = distribution(work, "distribution")
        dist2 = distribution(work, "distribution-behind-nginx")
        ng_port, auth_port = free_port(), free_port()
        auth = regate_proc(regate, work, "regate-auth", auth_port,
                           f"public_url: https://127.0.0.1:{ng_port}\nstorage: {{ backend: memory }}\n")
        ng = nginx_proc(work, ng_port, dist2.port, auth_port)
        for p in (rg, dist, dist2, auth, ng):
            procs.append(p)
            p.start()
        peers = [Peer("regate", "https", rg_port, auth_port=rg_port, proc=rg),
                 Peer("distribution", "http", dist.port, proc=dist),
                 Peer("nginx+auth", "https", ng_port, auth_port=ng_port, proc=None)]
        names = [p.name for p in peers]
        res = {p.name: {} for p in peers}

        def each(label, fn, workload):
            if workload not in only:
                return
            log(label)
            for p in peers:
                v = fn(p)
                if isinstance(v, dict):
                    res[p.name].update(v)

        each("monolithic push", lambda p: {"push_mono_mibps": push_monolithic(p, "bench/blob", blob_a, dig_a, blob)}, "push")
        each("chunked push", lambda p: {
            "push_chunked_mibps": push_chunked(p, "bench/chunked", blob_b, dig_b, blob, 5 * MiB)}, "chunked")
        each("pull, 1 stream", lambda p: {"pull_1_mibps": pull(p, "bench/blob", dig_a, blob, 1)}, "pull")
        each("pull, 4 streams", lambda p: {"pull_4_mibps": pull(p, "bench/blob", dig_a, blob, 4)}, "pull")
        each("manifest upload", lambda p: put_manifest(p, "bench/blob", "v1", dig_a, blob), "manifest")

        def manifests(p):
            r = {}
            h = p.headers("bench/blob", {"Accept": MANIFEST_MT})
            for m in ("GET", "HEAD"):
                for c in (1, 16):
                    w = load(loadgen, f"{p.base}/v2/bench/blob/manifests/v1", h, m, c, duration, ca)
                    k = f"manifest_{m.lower()}_c{c}"
                    r.update({f"{k}_rps": w["rps"], f"{k}_p50_ms": w["p50_ms"], f"{k}_p99_ms": w["p99_ms"]})
                    if w["errors"]:
                        r[f"{k}_errors"] = w["errors"]
            return r

        each("manifest GET/HEAD", manifests, "manifest")

        def tokens(p):
            if not p.auth_port:
                return {"token_rps": None}
            p.auth("bench/blob")  # warm: the bcrypt check is cached after the first sign-in
            w = load(loadgen, p.base + p.token_path("bench/blob"), {"Authorization": p.basic()}, "GET", 16,
                     duration, ca)
            return {"token_rps": w["rps"], "token_p99_ms": w["p99_ms"], "token_errors": w["errors"]}

        each("/token", tokens, "token")

        def skopeo_round(p):
            dst = f"docker://{p.host}/bench/img:v1"
            push = skopeo(["copy", "--preserve-digests", "--dest-tls-verify=false", *creds_args(p, "--dest-creds"),
                           f"oci:{img}:v1", dst])
            back = os.path.join(work, f"pulled-{p.name}")
            pl = skopeo(["copy", "--src-tls-verify=false", *creds_args(p, "--src-creds"), dst, f"oci:{back}:v1"])
            shutil.rmtree(back, ignore_errors=True)
            return {"skopeo_push_s": push, "skopeo_pull_s": pl}

        each("skopeo push/pull", skopeo_round, "skopeo")

        if "trust" in only:
            log("manifest GET of a signed image with the trust policy on (regate only)")
            res["regate"].update(trust_rows(regate, loadgen, work, ca, duration, procs))

        if "stream" in only:
            log(f"streaming {stream / GiB:.2f} GiB in and out (regate and distribution, fresh processes)")
        for p in peers:
            if p.proc and "stream" in only:
                res[p.name].update(stream_rss(p, "bench/stream", stream, work))
            else:
                res[p.name].update({"idle_rss_mib": None, "stream_peak_rss_mib": None})

        meta.update({
            "when": datetime.datetime.now().isoformat(timespec="seconds"), "quick": a.quick,
            "blob_bytes": blob, "chunk_bytes": 5 * MiB, "image_layers_mib": [layer_mib] * 5,
            "blob_rows_http": "negotiated (h2 over TLS, HTTP/1.1 plain)" if a.h2 else "HTTP/1.1",
            "stream_bytes": stream, "load_seconds": duration, "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(), "kernel": platform.release(),
            "regate": subprocess.run([regate, "--version"], capture_output=True, text=True).stdout.strip(),
            "git": subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip(),
            "peers": {"regate": "TLS (rustls), token auth (ES256), access log, fs storage fsync on",
                      "distribution": "docker-registry 2.8 (Debian), plain HTTP, no auth, fs storage",
                      "nginx+auth": "nginx (Debian) TLS + auth_request -> regate /nginx/auth (plain HTTP, "
                                    "memory storage) in front of docker-registry 2.8"},
        })
        goals = targets(res, meta)
        out = {"meta": meta, "results": res, "targets": goals,
               "ratios": {f"regate/{n}": {k: (res["regate"][k] / res[n][k])
                                          for k, *_ in ROWS
                                          if res["regate"].get(k) is not None and res[n].get(k)}
                          for n in names[1:]}}
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
        print(table(res, meta, names))
        print("\ntargets (issue #6):")
        for g in goals:
            print(f"  {'met   ' if g['met'] else 'MISSED'}  {g['target']}: {g['value']}")
        print(f"\n{'quick run; ' if a.quick else ''}blob rows over {meta['blob_rows_http']}; load average at the "
              f"end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; JSON: {json_path}")
    finally:
        for p in reversed(procs):
            p.stop()
        if not a.keep and not a.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif a.keep:
            log(f"kept {work}")


if __name__ == "__main__":
    main()
