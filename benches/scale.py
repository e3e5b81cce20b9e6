#!/usr/bin/env python3
"""regate vs distribution as the work grows (issue #23). Run through benches/scale.sh.

Data is written once, straight to disk, in distribution's layout (docker/registry/v2/...), and both
registries serve the same root:
  catalog   R repositories (default 10,000) of 5 tags each: small images sharing layers
  tags      one repository with T tags (default 50,000)
  gc        B blobs (default 100,000, and B/10 for the slope), 20 % of them referenced by nothing;
            each size --gc-rounds times (default 3) on fresh hard-linked copies, the medians
  gcs3      B/100 and B/10 blobs of gc data copied into moto's S3 server (python3 -m moto.server),
            one bucket per peer and size
Peers, started here on 127.0.0.1 (helpers from benches/compare.py):
  regate        TLS (self-signed), token auth (htpasswd user, ES256 JWTs), fs storage
  distribution  Debian's docker-registry (2.8), plain HTTP, no auth
Workloads: /v2/_catalog walked in pages of 100 and 1,000 (with RSS before and after and start-up
time); tags/list whole and paged on the big repository, manifest GET by tag there; gc dry run and
real at both sizes (time and peak RSS from wait4); a fleet of 50 clients pulling one 3-layer image
(curl, token fetched by each client) and then 50 pushing distinct small images (skopeo); and
docker push/pull of a multi-layer image (the Docker engine on this machine; `--repeat N` rounds on
fresh registries, the rows their medians).
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in the work tree from importing compare.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the peers, processes and load generator driver of benches/compare.py)
from compare import MiB, USER, PASSWORD, SERVICE, Proc, Peer, free_port, proc_status, write  # noqa: E402

REPO_ROOT = compare.REPO_ROOT
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def log(*a):
    print("scale:", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data, in distribution's layout


class Root:
    """writes blobs and links under ROOT/docker/registry/v2 the way distribution lays them out"""

    def __init__(self, root):
        self.root = root
        self.v2 = os.path.join(root, "docker", "registry", "v2")
        self.made = set()

    def _file(self, path, data):
        d = os.path.dirname(path)
        if d not in self.made:
            os.makedirs(d, exist_ok=True)
            self.made.add(d)
        with open(path, "wb") as f:
            f.write(data)

    def blob(self, data):
        h = hashlib.sha256(data).hexdigest()
        self._file(os.path.join(self.v2, "blobs", "sha256", h[:2], h, "data"), data)
        return h

    def link(self, repo, rel, hexd):
        self._file(os.path.join(self.v2, "repositories", repo, rel, "link"), f"sha256:{hexd}".encode())

    def manifest(self, config_hex, config_size, layers):
        m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
             "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{config_hex}", "size": config_size},
             "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{h}", "size": s} for h, s in layers]}
        b = json.dumps(m, separators=(",", ":")).encode()
        return self.blob(b), b

    def image(self, repo, tags, man_hex, config_hex, layer_hexes):
        """a pushed image: its revision and layer links, and tags pointing at it"""
        self.link(repo, f"_manifests/revisions/sha256/{man_hex}", man_hex)
        for h in [config_hex] + layer_hexes:
            self.link(repo, f"_layers/sha256/{h}", h)
        for t in tags:
            self.link(repo, f"_manifests/tags/{t}/current", man_hex)
            self.link(repo, f"_manifests/tags/{t}/index/sha256/{man_hex}", man_hex)


def config_blob(r, i):
    c = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                    "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"n": str(i)}}}).encode()
    return r.blob(c), len(c)


def gen_catalog(root, repos, tags_per_repo):
    """`repos` repositories team<NN>/app<NNNNN> with `tags_per_repo` tags each; images built from a
    pool of 50 manifests over 20 shared layers (a company registry: few base layers, many repos)"""
    r = Root(root)
    rnd = random.Random(23)
    layers = [(r.blob(rnd.randbytes(1024 + i)), 1024 + i) for i in range(20)]
    pool = []
    for i in range(50):
        ch, cs = config_blob(r, i)
        ls = [layers[(i + k) % 20] for k in range(3)]
        mh, _ = r.manifest(ch, cs, ls)
        pool.append((mh, ch, [h for h, _ in ls]))
    teams = max(1, repos // 100)
    names = []
    for i in range(repos):
        name = f"team{i % teams:03d}/app{i:05d}"
        names.append(name)
        for k in range(tags_per_repo):
            mh, ch, lh = pool[(i * tags_per_repo + k) % len(pool)]
            r.image(name, [f"v1.{k}"], mh, ch, lh)
    return sorted(names)


def gen_tags(root, name, tags):
    """one repository with `tags` tags over 100 images"""
    r = Root(root)
    rnd = random.Random(24)
    imgs = []
    for i in range(100):
        ch, cs = config_blob(r, 1000 + i)
        lh = r.blob(rnd.randbytes(2048))
        mh, mb = r.manifest(ch, cs, [(lh, 2048)])
        imgs.append((mh, ch, [lh], mb))
    for i, (mh, ch, lh, _) in enumerate(imgs):
        r.image(name, [f"build-{t:06d}" for t in range(i, tags, len(imgs))], mh, ch, lh)
    return imgs[0][3], [f"build-{t:06d}" for t in range(tags)]


def gen_gc(root, blobs):
    """`blobs` blobs: 80 % referenced by 4 % of them as manifests (1 config + 18 layers each,
    spread over 40 repositories, every manifest tagged), 20 % referenced by nothing"""
    r = Root(root)
    rnd = random.Random(blobs)
    per = 20  # manifest + config + 18 layers
    manifests = int(blobs * 0.8) // per
    for m in range(manifests):
        ch, cs = config_blob(r, m)
        ls = [(r.blob(rnd.randbytes(100)), 100) for _ in range(per - 2)]
        mh, _ = r.manifest(ch, cs, ls)
        r.image(f"gc/repo{m % 40:02d}", [f"t{m}"], mh, ch, [h for h, _ in ls])
    garbage = blobs - manifests * per
    for _ in range(garbage):
        r.blob(rnd.randbytes(100))
    return manifests * per, garbage


def count_blobs(root):
    n = 0
    for _, _, files in os.walk(os.path.join(root, "docker", "registry", "v2", "blobs")):
        n += sum(1 for f in files if f == "data")
    return n


# ---------------------------------------------------------------- peers


def regate_cfg(work, name, root, port, tls=True):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    scheme = "https" if tls else "http"
    cfg = write(os.path.join(d, "regate.yaml"),
                f"listen: 127.0.0.1:{port}\npublic_url: {scheme}://127.0.0.1:{port}\n"
                + (f"tls: {{ cert: {work}/tls.crt, key: {work}/tls.key }}\n" if tls else "")
                + f"data_dir: {d}/data\nstorage: {{ backend: fs, fs: {{ root: {root} }} }}\n"
                f"auth: {{ htpasswd: {work}/htpasswd, service: {SERVICE}, token_ttl: 3600 }}\n"
                f"access:\n  - {{ account: {USER}, repository: \"*\", actions: [pull, push, delete], catalog: true }}\n"
                f"limits: {{ token_requests_per_second: 0, failed_auth_per_minute: 0 }}\n")
    return cfg


def regate_proc(regate, work, name, root, tls=True):
    port = free_port()
    cfg = regate_cfg(work, name, root, port, tls)
    return Proc(name, [regate, "serve", "--config", cfg], os.path.join(work, name, "log.txt"), port,
                cwd=os.path.join(work, name))


def dist_cfg(work, name, root, port=None):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    port = port or free_port()
    cfg = write(os.path.join(d, "config.yml"),
                f"version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\nstorage:\n"
                f"  filesystem: {{ rootdirectory: {root} }}\n  delete: {{ enabled: true }}\n"
                f"http:\n  addr: 127.0.0.1:{port}\n")
    return cfg, port


# the distribution binary every distribution row runs (`--distribution`): Debian's 2.8 by
# default; a 3.x `registry` binary takes the same `serve <config>` and `garbage-collect <config>`
DIST = "docker-registry"


def dist_proc(work, name, root):
    cfg, port = dist_cfg(work, name, root)
    return Proc(name, [DIST, "serve", cfg], os.path.join(work, name, "log.txt"), port)


def timed_start(proc):
    """starts proc; seconds until its port accepts a connection (polled every 2 ms)"""
    out = open(proc.logfile, "ab")
    t0 = time.perf_counter()
    proc.p = subprocess.Popen(proc.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=proc.cwd,
                              stdin=subprocess.DEVNULL)
    while True:
        if proc.p.poll() is not None:
            tail = open(proc.logfile, errors="replace").read()[-1500:]
            sys.exit(f"scale: {proc.name} exited at start ({proc.p.returncode}): {tail}")
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
            return time.perf_counter() - t0
        except OSError:
            if time.perf_counter() - t0 > 60:
                sys.exit(f"scale: {proc.name} does not listen; see {proc.logfile}")
            time.sleep(0.002)


def catalog_headers(peer):
    if not peer.auth_port:
        return {}
    if "catalog" not in peer.tokens:
        q = urllib.parse.urlencode({"service": SERVICE, "scope": "registry:catalog:*"})
        c = peer.conn()
        c.request("GET", f"/token?{q}", headers={"Authorization": peer.basic()})
        r = c.getresponse()
        peer.tokens["catalog"] = "Bearer " + json.loads(r.read())["token"]
    return {"Authorization": peer.tokens["catalog"]}


NEXT = re.compile(r"<([^>]+)>;\s*rel=\"?next\"?")


def walk(peer, first, key, headers):
    """follows Link: rel=next from `first` on one keep-alive connection; (items, pages, seconds)"""
    c = peer.conn()
    path, items, pages = first, [], 0
    t0 = time.perf_counter()
    while path:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"scale: {peer.name} GET {path} answered {r.status}: {body[:200]!r}")
        items += json.loads(body)[key] or []
        pages += 1
        m = NEXT.search(r.getheader("Link") or "")
        path = compare.rel(m.group(1)) if m else None
    return items, pages, time.perf_counter() - t0


def repeat(peer, paths, headers, seconds):
    """GETs paths in turn on one keep-alive connection for about `seconds`; req/s, p50, p99 (ms)
    and the item counts of the answers (to show what each peer really returned)"""
    c = peer.conn()
    lat, sizes = [], []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds or i < 3:
        p = paths[i % len(paths)]
        t = time.perf_counter()
        c.request("GET", p, headers=headers)
        r = c.getresponse()
        body = r.read()
        lat.append(time.perf_counter() - t)
        if r.status != 200:
            sys.exit(f"scale: {peer.name} GET {p} answered {r.status}: {body[:200]!r}")
        sizes.append(len(json.loads(body).get("tags") or []))
        i += 1
    dt = time.perf_counter() - t0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return {"rps": i / dt, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "items": statistics.median(sizes)}


def rss(proc):
    return proc_status(proc.pid, "VmRSS") / MiB, proc_status(proc.pid, "VmHWM") / MiB


def run_rusage(cmd, cwd=None):
    """runs cmd under /usr/bin/time; (seconds, peak RSS in MiB, stdout+stderr). Not wait4 from
    here: a child forked from this Python process keeps Python's high-water mark across exec."""
    out = tempfile.TemporaryFile()
    with tempfile.NamedTemporaryFile("r") as tf:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], stdout=out, stderr=subprocess.STDOUT,
                           cwd=cwd, stdin=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        peak_kib = int(tf.read().strip().splitlines()[-1])
    out.seek(0)
    text = out.read().decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"scale: {' '.join(cmd)} exited {p.returncode}: {text[-1500:]}")
    return dt, peak_kib / 1024, text


def pctl(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# ---------------------------------------------------------------- workloads


def catalog_workload(regate, work, res, repos, tags_per_repo, ca):
    root = os.path.join(work, "root-catalog")
    t0 = time.perf_counter()
    names = gen_catalog(root, repos, tags_per_repo)
    log(f"catalog data: {repos} repositories x {tags_per_repo} tags in {time.perf_counter() - t0:.1f} s")
    rg, dist = regate_proc(regate, work, "regate-catalog", root), dist_proc(work, "dist-catalog", root)
    peers = [(Peer("regate", "https", rg.port, auth_port=rg.port), rg),
             (Peer("distribution", "http", dist.port), dist)]
    for peer, proc in peers:
        # drop the page cache's advantage of whoever runs second: both run warm, after one walk
        # one start first: a first start also generates the token signing key, so the timed
        # start-ups are all restarts (a first start stopped mid-write once left an empty key file;
        # since 1b7e4d0 the key is linked into place whole, and an empty one is replaced)
        timed_start(proc)
        time.sleep(1)
        proc.stop()
        starts = []
        for _ in range(3):
            starts.append(timed_start(proc))
            proc.stop()
        up = timed_start(proc)
        time.sleep(1)
        fresh, _ = rss(proc)
        r = res[peer.name]
        r["startup_ms"] = statistics.median(starts + [up]) * 1000
        r["catalog_fresh_rss_mib"] = fresh
        h = catalog_headers(peer)
        walk(peer, "/v2/_catalog?n=1000", "repositories", h)  # warm the page cache
        for n in (100, 1000):
            items, pages, dt = walk(peer, f"/v2/_catalog?n={n}", "repositories", h)
            if items != names:
                sys.exit(f"scale: {peer.name} catalog in pages of {n}: {len(items)} names, "
                         f"{'in another order' if sorted(items) == names else 'not the repositories written'}")
            r[f"catalog_n{n}_s"] = dt
            r[f"catalog_n{n}_pages_per_s"] = pages / dt
        after, hwm = rss(proc)
        r["catalog_after_rss_mib"], r["catalog_hwm_rss_mib"] = after, hwm
        proc.stop()


def tags_workload(regate, loadgen, work, res, tags, seconds, ca):
    root = os.path.join(work, "root-tags")
    name = "ci/builds"
    t0 = time.perf_counter()
    man, all_tags = gen_tags(root, name, tags)
    log(f"tags data: {tags} tags in {time.perf_counter() - t0:.1f} s")
    all_sorted = sorted(all_tags)
    # a registry's tags directory between pushes: regate keeps a listing in memory only once the
    # directory's last change is 2 s old (its "racy" rule); within 2 s of a push the list is read
    # from disk (the row below this one measures that)
    time.sleep(2.5)
    rg, dist = regate_proc(regate, work, "regate-tags", root), dist_proc(work, "dist-tags", root)
    peers = [(Peer("regate", "https", rg.port, auth_port=rg.port), rg),
             (Peer("distribution", "http", dist.port), dist)]
    rnd = random.Random(5)
    lasts = [all_sorted[rnd.randrange(len(all_sorted))] for _ in range(50)]
    for peer, proc in peers:
        proc.start()
        time.sleep(0.5)
        fresh, _ = rss(proc)
        r = res[peer.name]
        h = peer.headers(name)
        walk(peer, f"/v2/{name}/tags/list", "tags", h)  # warm
        # the median of several walks (one walk is one sample of a few tens of milliseconds)
        times, t0 = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - t0 < seconds and len(times) < 50):
            items, pages, dt = walk(peer, f"/v2/{name}/tags/list", "tags", h)
            if sorted(items) != all_sorted:
                sys.exit(f"scale: {peer.name} tags/list gave {len(items)} tags")
            times.append(dt)
        r["tags_whole_s"], r["tags_whole_pages"] = statistics.median(times), pages
        if peer.name == "regate":
            # just after a push: a tag made and deleted again, so the directory changed this instant
            os.makedirs(os.path.join(root, "docker/registry/v2/repositories", name, "_manifests/tags", "zz-racy"))
            os.rmdir(os.path.join(root, "docker/registry/v2/repositories", name, "_manifests/tags", "zz-racy"))
            fresh_times = [walk(peer, f"/v2/{name}/tags/list", "tags", h)[2] for _ in range(5)]
            r["tags_whole_changed_s"] = statistics.median(fresh_times)
        if peer.name == "regate" and pages == 1:
            r["tags_whole_ceiling_s"] = static_answer_ceiling(work, peer, f"/v2/{name}/tags/list", h, seconds)
        w = repeat(peer, [f"/v2/{name}/tags/list?n=100&last={l}" for l in lasts], h, seconds)
        r["tags_page100_rps"], r["tags_page100_p50_ms"] = w["rps"], w["p50_ms"]
        r["tags_page100_items"] = w["items"]
        after, hwm = rss(proc)
        r["tags_fresh_rss_mib"], r["tags_hwm_rss_mib"] = fresh, hwm
        url = f"{peer.base}/v2/{name}/manifests/{all_tags[len(all_tags) // 2]}"
        lw = compare.load(loadgen, url, peer.headers(name, {"Accept": OCI_MANIFEST}), "GET", 16, seconds, ca)
        r["tags_manifest_get_rps"], r["tags_manifest_get_p99_ms"] = lw["rps"], lw["p99_ms"]
        r["tags_manifest_get_errors"] = lw["errors"]
        proc.stop()


def static_answer_ceiling(work, peer, path, headers, seconds):
    """the same client fetching regate's answer to `path`, saved as a file, from nginx over TLS
    (one keep-alive connection, the body parsed as JSON as in `walk`): the floor of the
    whole-list row on this machine with this client; median seconds"""
    c = peer.conn()
    c.request("GET", path, headers=headers)
    body = c.getresponse().read()
    d = tempfile.mkdtemp(prefix="tags-ceiling-", dir=work)
    with open(os.path.join(d, "list.json"), "wb") as f:
        f.write(body)
    shutil.copy(os.path.join(work, "tls.crt"), d)
    shutil.copy(os.path.join(work, "tls.key"), d)
    st = compare.nginx_static_tls(d, free_port(), d)
    st.start()
    try:
        cc = Peer("nginx", "https", st.port).conn()
        times, t0 = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - t0 < seconds and len(times) < 50):
            t = time.perf_counter()
            cc.request("GET", "/list.json")
            r = cc.getresponse()
            got = r.read()
            if r.status != 200 or got != body:
                sys.exit(f"scale: nginx static answered {r.status}")
            json.loads(got)
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        st.stop()


def gc_workload(regate, work, res, sizes, rounds):
    """gc over each size, dry run and real, `rounds` times each (a real run on a fresh hard-linked
    copy of the same data each time); the rows are the medians, the samples go to the JSON"""
    for size in sizes:
        base = os.path.join(work, f"root-gc-{size}")
        t0 = time.perf_counter()
        kept, garbage = gen_gc(base, size)
        log(f"gc data: {size} blobs ({garbage} unreferenced) in {time.perf_counter() - t0:.1f} s")
        for peer in ("regate", "distribution"):
            r = res[peer]
            samples = {True: [], False: []}
            for i in range(rounds):
                root = f"{base}-{peer}-{i}"
                subprocess.run(["cp", "-al", base, root], check=True)
                if peer == "regate":
                    cfg = regate_cfg(work, f"regate-gc-{size}-{i}", root, free_port())
                    cmd = lambda dry: [regate, "gc", *(["--dry-run"] if dry else []), "--grace", "0s", "--config", cfg]
                else:
                    cfg, _ = dist_cfg(work, f"dist-gc-{size}-{i}", root)
                    cmd = lambda dry: [DIST, "garbage-collect", *(["--dry-run"] if dry else []), cfg]
                count_blobs(root)  # the same warm dentry cache for both
                for dry in (True, False):
                    samples[dry].append(run_rusage(cmd(dry))[:2])
                left = count_blobs(root)
                if left != kept:
                    sys.exit(f"scale: after {peer}'s gc {left} blobs are left, {kept} expected")
                remove(root)
            for dry in (True, False):
                k = f"gc{size // 1000}k_{'dry' if dry else 'real'}"
                r[f"{k}_s"] = statistics.median(t for t, _ in samples[dry])
                r[f"{k}_rss_mib"] = max(m for _, m in samples[dry])
                r[f"{k}_samples_s"] = [t for t, _ in samples[dry]]
        remove(base)


def moto_server(work):
    """moto's S3 server on a free port (as tests/object_storage.rs starts it); (Popen, endpoint)"""
    port = free_port()
    log_path = os.path.join(work, "moto.log")
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            if p.poll() is not None or time.perf_counter() - t0 > 60:
                sys.exit(f"scale: moto did not start (pip install 'moto[server]'); see {log_path}")
            time.sleep(0.05)


def gc_s3_workload(regate, work, res, sizes):
    """the gc rows on the S3 server: the gc data of each size copied into moto, one bucket per
    peer and size; regate's S3 backend against distribution's s3 driver. moto scans every key of
    a bucket for each listing, so its own time grows with the bucket as well as with the data"""
    import boto3
    from concurrent.futures import ThreadPoolExecutor
    moto, endpoint = moto_server(work)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        for size in sizes:
            base = os.path.join(work, f"root-gcs3-{size}")
            kept, garbage = gen_gc(base, size)
            files = [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
            t0 = time.perf_counter()
            for peer in ("regate", "distribution"):
                bucket = f"gc-{peer}-{size}"
                s3.create_bucket(Bucket=bucket)

                def put(path, bucket=bucket):
                    with open(path, "rb") as f:
                        s3.put_object(Bucket=bucket, Key=os.path.relpath(path, base), Body=f.read())
                with ThreadPoolExecutor(8) as ex:
                    list(ex.map(put, files))
            log(f"gc on S3: {size} blobs ({garbage} unreferenced), {2 * len(files)} objects written to moto "
                f"in {time.perf_counter() - t0:.1f} s")
            remove(base)

            def blobs_left(bucket):
                n = 0
                for page in s3.get_paginator("list_objects_v2").paginate(
                        Bucket=bucket, Prefix="docker/registry/v2/blobs/"):
                    n += sum(1 for o in page.get("Contents", []) if o["Key"].endswith("/data"))
                return n

            for peer in ("regate", "distribution"):
                bucket = f"gc-{peer}-{size}"
                d = os.path.join(work, f"{peer}-gcs3-{size}")
                os.makedirs(d, exist_ok=True)
                if peer == "regate":
                    cfg = write(os.path.join(d, "regate.yaml"),
                                f"listen: 127.0.0.1:{free_port()}\ndata_dir: {d}/data\n"
                                f"storage: {{ backend: s3, s3: {{ bucket: {bucket}, region: us-east-1, "
                                f"endpoint: {endpoint}, access_key_id: test, secret_access_key: test }} }}\n")
                    cmd = lambda dry: [regate, "gc", *(["--dry-run"] if dry else []), "--grace", "0s", "--config", cfg]
                else:
                    cfg = write(os.path.join(d, "config.yml"),
                                "version: 0.1\nlog: { level: warn }\nstorage:\n  s3:\n"
                                f"    region: us-east-1\n    regionendpoint: {endpoint}\n    bucket: {bucket}\n"
                                "    accesskey: test\n    secretkey: test\n"
                                "    secure: false\n    v4auth: true\n  delete: { enabled: true }\n"
                                f"http:\n  addr: 127.0.0.1:{free_port()}\n")
                    cmd = lambda dry: [DIST, "garbage-collect", *(["--dry-run"] if dry else []), cfg]
                r = res[peer]
                for dry in (True, False):
                    k = f"gcs3_{size // 1000}k_{'dry' if dry else 'real'}"
                    dt, peak, out = run_rusage(cmd(dry))
                    r[f"{k}_s"], r[f"{k}_rss_mib"] = dt, peak
                left = blobs_left(bucket)
                if left != kept:
                    sys.exit(f"scale: after {peer}'s gc on S3 {left} blobs are left, {kept} expected: {out[-1500:]}")
    finally:
        moto.terminate()
        moto.wait()


def fleet_workload(regate, work, res, clients, layer_mib, ca):
    root_r, root_d = os.path.join(work, "root-fleet-regate"), os.path.join(work, "root-fleet-dist")
    rg, dist = regate_proc(regate, work, "regate-fleet", root_r), dist_proc(work, "dist-fleet", root_d)
    rg.start()
    dist.start()
    peers = [(Peer("regate", "https", rg.port, auth_port=rg.port), rg), (Peer("distribution", "http", dist.port), dist)]
    img = os.path.join(work, "fleet-image")
    subprocess.run(["python3", os.path.join(REPO_ROOT, "tests/tools/mkimage.py"), img, "v1"] + [str(layer_mib)] * 3,
                   check=True, capture_output=True)
    index = json.load(open(os.path.join(img, "index.json")))
    man_digest = index["manifests"][0]["digest"]
    man = json.load(open(os.path.join(img, "blobs", "sha256", man_digest.split(":")[1])))
    blobs = [(l["digest"], l["size"]) for l in man["layers"]] + [(man["config"]["digest"], man["config"]["size"])]
    total = sum(s for _, s in blobs)
    small = []
    for i in range(clients):
        d = os.path.join(work, f"small-{i}")
        subprocess.run(["python3", os.path.join(REPO_ROOT, "tests/tools/mkimage.py"), d, "v1", "0.5", "0.5"],
                       check=True, capture_output=True)
        small.append(d)
    try:
        for peer, proc in peers:
            r = res[peer.name]
            compare.skopeo(["copy", "--preserve-digests", "--dest-tls-verify=false",
                            *compare.creds_args(peer, "--dest-creds"), f"oci:{img}:v1", f"docker://{peer.host}/fleet/app:v1"])
            # each client: its own token (Basic to /token, as docker does), then manifest + blobs
            # on one keep-alive connection, bodies to /dev/null, sizes checked
            tls = ["-k"] if peer.scheme == "https" else []
            script = []
            if peer.auth_port:
                q = urllib.parse.urlencode({"service": SERVICE, "scope": "repository:fleet/app:pull"})
                script.append(f"T=$(curl -sS --http1.1 -k --fail -u {USER}:{PASSWORD} '{peer.base}/token?{q}' "
                              f"| sed -E 's/.*\"token\" *: *\"([^\"]+)\".*/\\1/') && [ -n \"$T\" ] || exit 9; "
                              f"A=\"Authorization: Bearer $T\"")
            else:
                script.append("A='X-No-Auth: 1'")
            urls = [f"{peer.base}/v2/fleet/app/manifests/v1"] + [f"{peer.base}/v2/fleet/app/blobs/{d}" for d, _ in blobs]
            outs = " ".join(f"'{u}' -o /dev/null" for u in urls)
            script.append(f"curl -sS --http1.1 {' '.join(tls)} --fail -H \"$A\" -H 'Accept: {OCI_MANIFEST}' "
                          f"-w '%{{size_download}}\\n' {outs}")
            sh = "; ".join(script)
            proc_peak = [0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    v = proc_status(proc.pid, "VmRSS")
                    proc_peak[0] = max(proc_peak[0], v or 0)
                    time.sleep(0.05)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            ps = [(subprocess.Popen(["bash", "-c", sh], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                   time.perf_counter()) for _ in range(clients)]
            times, errors = [], 0
            waiting = list(ps)
            done = {}
            while waiting:
                for p, st in list(waiting):
                    if p.poll() is not None:
                        done[p] = time.perf_counter() - st
                        waiting.remove((p, st))
                time.sleep(0.005)
            wall = time.perf_counter() - t0
            for p, _ in ps:
                out, err = p.communicate()
                got = sum(int(x) for x in out.split())
                if p.returncode != 0 or got < total:
                    errors += 1
                    log(f"{peer.name} fleet client failed ({p.returncode}, {got} of {total} bytes): {err[-300:]}")
                times.append(done[p])
            stop.set()
            th.join()
            r["fleet_pull_s"], r["fleet_pull_mibps"] = wall, clients * total / MiB / wall
            r["fleet_pull_p50_s"], r["fleet_pull_p99_s"] = pctl(times, 0.5), pctl(times, 0.99)
            r["fleet_pull_errors"], r["fleet_pull_peak_rss_mib"] = errors, proc_peak[0] / MiB
            # 50 pushing distinct small images at once (skopeo: token dance, blob uploads, manifest)
            t0 = time.perf_counter()
            ps = [(subprocess.Popen(["skopeo", "copy", "--dest-tls-verify=false", *compare.creds_args(peer, "--dest-creds"),
                                     f"oci:{d}:v1", f"docker://{peer.host}/fleet/push{i}:v1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), time.perf_counter())
                  for i, d in enumerate(small)]
            times, errors = [], 0
            for p, st in ps:
                _, err = p.communicate()
                times.append(time.perf_counter() - st)
                if p.returncode != 0:
                    errors += 1
                    log(f"{peer.name} fleet push failed: {err[-300:]}")
            wall = time.perf_counter() - t0
            r["fleet_push_s"], r["fleet_push_p50_s"], r["fleet_push_p99_s"] = wall, pctl(times, 0.5), pctl(times, 0.99)
            r["fleet_push_errors"] = errors
    finally:
        rg.stop()
        dist.stop()
        for d in [img, root_r, root_d] + small:
            shutil.rmtree(d, ignore_errors=True)


def docker_workload(regate, work, res, layers, layer_mib, ca, repeat=1):
    """docker push then pull against each peer, `repeat` times (each time on fresh, empty
    registries at new ports, so no layer is already there or mountable, and the peers in a rotated
    order); the rows are the medians, the samples go to the JSON"""
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        log("docker engine not reachable: docker rows skipped")
        return
    img = os.path.join(work, "docker-image")
    subprocess.run(["python3", os.path.join(REPO_ROOT, "tests/tools/mkimage.py"), img, "v1"] + [str(layer_mib)] * layers,
                   check=True, capture_output=True)
    archive = os.path.join(work, "docker-image.tar")
    compare.skopeo(["copy", f"oci:{img}:v1", f"docker-archive:{archive}:scale/docker:v1"])
    dcfg = os.path.join(work, "docker-config")
    os.makedirs(dcfg, exist_ok=True)
    env = dict(os.environ, DOCKER_CONFIG=dcfg)
    certs = []
    procs = []
    samples = {}

    def docker(*a, check=True):
        out = subprocess.run(["docker", *a], capture_output=True, text=True, env=env)
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(a)}: {out.stderr[-500:]}")
        return out

    try:
        for rep in range(repeat):
            round_ = [("regate (TLS)", regate_proc(regate, work, f"regate-docker-tls-{rep}",
                                                   os.path.join(work, f"root-docker-rt-{rep}"))),
                      ("regate", regate_proc(regate, work, f"regate-docker-{rep}",
                                             os.path.join(work, f"root-docker-r-{rep}"), tls=False)),
                      ("distribution", dist_proc(work, f"dist-docker-{rep}", os.path.join(work, f"root-docker-d-{rep}")))]
            round_ = round_[rep % 3:] + round_[:rep % 3]
            procs += [p for _, p in round_]
            for label, proc in round_:
                proc.start()
                host = f"127.0.0.1:{proc.port}"
                if label == "regate (TLS)":
                    d = f"/etc/docker/certs.d/{host}"
                    os.makedirs(d, exist_ok=True)
                    shutil.copy(ca, os.path.join(d, "ca.crt"))
                    certs.append(d)
                if label.startswith("regate"):
                    out = subprocess.run(["docker", "login", "-u", USER, "--password-stdin", host], input=PASSWORD,
                                         capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        raise RuntimeError(f"docker login {host}: {out.stderr[-500:]}")
                ref = f"{host}/scale/docker:v1"
                docker("load", "-i", archive)
                docker("tag", "scale/docker:v1", ref)
                t0 = time.perf_counter()
                docker("push", ref)
                push = time.perf_counter() - t0
                docker("rmi", ref, "scale/docker:v1")
                t0 = time.perf_counter()
                docker("pull", ref)
                pull = time.perf_counter() - t0
                docker("rmi", ref)
                key = {"regate (TLS)": "docker_tls", "regate": "docker_plain", "distribution": "docker_plain"}[label]
                peer = "distribution" if label == "distribution" else "regate"
                samples.setdefault((peer, f"{key}_push_s"), []).append(push)
                samples.setdefault((peer, f"{key}_pull_s"), []).append(pull)
                log(f"docker round {rep + 1}/{repeat}, {label}: push {push:.2f} s, pull {pull:.2f} s")
                proc.stop()
    except RuntimeError as e:
        log(f"docker rows incomplete: {e}")
    finally:
        for p in procs:
            p.stop()
        docker("rmi", "scale/docker:v1", check=False)
        for d in certs:
            shutil.rmtree(d, ignore_errors=True)
        for d in (img, dcfg, archive):
            shutil.rmtree(d, ignore_errors=True) if os.path.isdir(d) else (os.path.exists(d) and os.unlink(d))
        for (peer, k), v in samples.items():
            res[peer][k] = statistics.median(v)
            res[peer][k[:-2] + "_samples_s"] = v


# ---------------------------------------------------------------- report

# key, label, unit, higher is better
def rows(meta):
    R, T = meta["repositories"], meta["tags"]
    out = [
        ("startup_ms", f"start-up to listening ({R:,} repositories)", "ms", False),
        ("catalog_fresh_rss_mib", "  RSS, fresh process", "MiB", False),
        ("catalog_n100_pages_per_s", f"/v2/_catalog walk, n=100 ({R // 100} pages)", "pages/s", True),
        ("catalog_n100_s", "  whole walk", "s", False),
        ("catalog_n1000_pages_per_s", f"/v2/_catalog walk, n=1000 ({math.ceil(R / 1000)} pages)", "pages/s", True),
        ("catalog_n1000_s", "  whole walk", "s", False),
        ("catalog_after_rss_mib", "  RSS after both walks", "MiB", False),
        ("catalog_hwm_rss_mib", "  peak RSS (VmHWM)", "MiB", False),
        ("tags_whole_s", f"tags/list, all {T:,} tags (following Link)", "s", False),
        ("tags_whole_pages", "  pages it took", "pages", None),
        ("tags_whole_changed_s", "  regate within 2 s of a change (read from disk)", "s", None),
        ("tags_whole_ceiling_s", "  ceiling: regate's answer as a static file, nginx TLS, same client", "s", None),
        ("tags_page100_rps", "tags/list?n=100&last=<random>", "req/s", True),
        ("tags_page100_p50_ms", "  p50", "ms", False),
        ("tags_page100_items", "  tags per answer", "tags", None),
        ("tags_hwm_rss_mib", "  peak RSS (VmHWM)", "MiB", False),
        ("tags_manifest_get_rps", f"manifest GET by tag among {T:,}, 16 conn", "req/s", True),
        ("tags_manifest_get_p99_ms", "  p99", "ms", False),
    ]
    for size in meta["gc_sizes"]:
        k = f"gc{size // 1000}k"
        out += [(f"{k}_dry_s", f"gc dry run, {size:,} blobs (20 % garbage)", "s", False),
                (f"{k}_dry_rss_mib", "  peak RSS", "MiB", False),
                (f"{k}_real_s", f"gc, {size:,} blobs", "s", False),
                (f"{k}_real_rss_mib", "  peak RSS", "MiB", False)]
    for size in meta.get("gcs3_sizes", []):
        k = f"gcs3_{size // 1000}k"
        out += [(f"{k}_dry_s", f"gc dry run on S3 (moto), {size:,} blobs", "s", False),
                (f"{k}_dry_rss_mib", "  peak RSS", "MiB", False),
                (f"{k}_real_s", f"gc on S3 (moto), {size:,} blobs", "s", False),
                (f"{k}_real_rss_mib", "  peak RSS", "MiB", False)]
    c, L = meta["fleet_clients"], meta["fleet_layer_mib"]
    out += [
        ("fleet_pull_mibps", f"fleet: {c} clients pull a 3x{L} MiB image", "MiB/s", True),
        ("fleet_pull_s", "  total", "s", False),
        ("fleet_pull_p50_s", "  p50 per client", "s", False),
        ("fleet_pull_p99_s", "  p99 per client", "s", False),
        ("fleet_pull_errors", "  errors", "", False),
        ("fleet_pull_peak_rss_mib", "  server RSS peak (sampled)", "MiB", False),
        ("fleet_push_s", f"fleet: {c} clients push distinct small images (skopeo)", "s", False),
        ("fleet_push_p50_s", "  p50 per client", "s", False),
        ("fleet_push_p99_s", "  p99 per client", "s", False),
        ("fleet_push_errors", "  errors", "", False),
        ("docker_plain_push_s", f"docker push, {meta['docker_layers']}x{meta['docker_layer_mib']} MiB, plain HTTP"
         + (f" (median of {meta['docker_repeat']})" if meta.get("docker_repeat", 1) > 1 else ""), "s", False),
        ("docker_plain_pull_s", "docker pull, plain HTTP", "s", False),
        ("docker_tls_push_s", "docker push, regate over TLS", "s", False),
        ("docker_tls_pull_s", "docker pull, regate over TLS", "s", False),
    ]
    return out


def table(res, meta):
    cols = ["figure", "unit", "regate", "distribution", "regate better by"]
    lines = []
    for key, label, unit, higher in rows(meta):
        a, b = res["regate"].get(key), res["distribution"].get(key)
        if a is None and b is None:
            continue
        ratio = ""
        if a is not None and b and higher is not None:
            # rates: regate/distribution; times and sizes: distribution/regate (> 1: regate better)
            ratio = f"{a / b:.2f}x" if higher else f"{b / a:.2f}x" if a else ""
        lines.append([label, unit, compare.fmt(a), compare.fmt(b), ratio])
    w = [max(len(str(r[i])) for r in lines + [cols]) for i in range(len(cols))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(r))
    return "\n".join([line(cols), "  ".join("-" * x for x in w)] + [line(r) for r in lines])


def targets(res, meta):
    r, d = res["regate"], res["distribution"]
    out = []

    def add(what, fig):
        try:
            value, ok = fig()
        except (KeyError, TypeError, ZeroDivisionError):
            return
        out.append({"target": what, "value": value, "met": bool(ok)})

    for n in (100, 1000):
        k = f"catalog_n{n}_pages_per_s"
        add(f"catalog walk, n={n}: >= 5x distribution's pages/s",
            lambda k=k: (f"{r[k] / d[k]:.1f}x", r[k] / d[k] >= 5))
    add("tags/list, all tags: >= 5x distribution's throughput",
        lambda: (f"{d['tags_whole_s'] / r['tags_whole_s']:.1f}x"
                 + (f" (the client's ceiling here, nginx serving the same answer over TLS: "
                    f"{d['tags_whole_s'] / r['tags_whole_ceiling_s']:.1f}x; regate reaches "
                    f"{100 * r['tags_whole_ceiling_s'] / r['tags_whole_s']:.0f} % of it)"
                    if r.get("tags_whole_ceiling_s") else ""),
                 d["tags_whole_s"] / r["tags_whole_s"] >= 5))
    add("tags/list?n=100: >= 5x distribution's req/s",
        lambda: (f"{r['tags_page100_rps'] / d['tags_page100_rps']:.1f}x (distribution answers "
                 f"{d['tags_page100_items']:.0f} tags, regate {r['tags_page100_items']:.0f})",
                 r["tags_page100_rps"] / d["tags_page100_rps"] >= 5))
    add("catalog walk does not grow memory (VmHWM - fresh RSS <= 16 MiB)",
        lambda: (f"+{r['catalog_hwm_rss_mib'] - r['catalog_fresh_rss_mib']:.1f} MiB",
                 r["catalog_hwm_rss_mib"] - r["catalog_fresh_rss_mib"] <= 16))
    add("tag listing does not grow memory (VmHWM - fresh RSS <= 16 MiB)",
        lambda: (f"+{r['tags_hwm_rss_mib'] - r['tags_fresh_rss_mib']:.1f} MiB",
                 r["tags_hwm_rss_mib"] - r["tags_fresh_rss_mib"] <= 16))
    big, small = max(meta["gc_sizes"]), min(meta["gc_sizes"])
    kb, ks = f"gc{big // 1000}k_real", f"gc{small // 1000}k_real"
    scale = big / small
    add(f"gc of {big:,} blobs <= 60 s (x{100000 / big:.0f} for 100k)",
        lambda: (f"{r[kb + '_s']:.1f} s", r[kb + "_s"] * 100000 / big <= 60))
    add(f"gc of {big:,} blobs <= 256 MiB peak RSS",
        lambda: (f"{r[kb + '_rss_mib']:.1f} MiB", r[kb + "_rss_mib"] <= 256))

    def slope(k):
        e = math.log(r[kb + k] / r[ks + k]) / math.log(scale)
        return f"exponent {e:.2f} ({r[ks + k]:.3g} -> {r[kb + k]:.3g})", e <= 1.1

    add(f"gc time grows no worse than linearly ({small:,} -> {big:,})", lambda: slope("_s"))
    add(f"gc peak RSS grows no worse than linearly ({small:,} -> {big:,})", lambda: slope("_rss_mib"))
    if len(meta.get("gcs3_sizes", [])) == 2:
        s3small, s3big = meta["gcs3_sizes"]
        k3s, k3b = f"gcs3_{s3small // 1000}k_real_s", f"gcs3_{s3big // 1000}k_real_s"

        def s3slope(p):
            e = math.log(p[k3b] / p[k3s]) / math.log(s3big / s3small)
            return e

        add(f"gc on S3 time grows no worse than linearly ({s3small:,} -> {s3big:,})",
            lambda: (f"exponent {s3slope(r):.2f} ({r[k3s]:.3g} -> {r[k3b]:.3g}; distribution's "
                     f"{s3slope(d):.2f})", s3slope(r) <= 1.1))
    add("fleet pull: aggregate >= distribution's (TLS + token against plain HTTP)",
        lambda: (f"{r['fleet_pull_mibps'] / d['fleet_pull_mibps']:.2f}x"
                 + (f" (curl TLS ceiling here {meta['tls_ceiling_mibps'] / d['fleet_pull_mibps']:.2f}x)"
                    if meta.get("tls_ceiling_mibps") else ""),
                 r["fleet_pull_mibps"] >= d["fleet_pull_mibps"]))
    add("fleet pull: p99 per client <= 1.5x p50",
        lambda: (f"{r['fleet_pull_p99_s'] / r['fleet_pull_p50_s']:.2f}x",
                 r["fleet_pull_p99_s"] <= 1.5 * r["fleet_pull_p50_s"]))
    add("fleet push: p99 per client <= 1.5x p50",
        lambda: (f"{r['fleet_push_p99_s'] / r['fleet_push_p50_s']:.2f}x",
                 r["fleet_push_p99_s"] <= 1.5 * r["fleet_push_p50_s"]))
    add("fleet: no errors",
        lambda: (f"{r['fleet_pull_errors'] + r['fleet_push_errors']} errors",
                 r["fleet_pull_errors"] + r["fleet_push_errors"] == 0))
    for op in ("push", "pull"):
        add(f"docker {op} no slower than distribution (plain HTTP)",
            lambda op=op: (f"{r[f'docker_plain_{op}_s']:.2f} s vs {d[f'docker_plain_{op}_s']:.2f} s",
                           r[f"docker_plain_{op}_s"] <= d[f"docker_plain_{op}_s"] * 1.05))
        add(f"docker {op} over TLS no slower than distribution's plain HTTP",
            lambda op=op: (f"{r[f'docker_tls_{op}_s']:.2f} s vs {d[f'docker_plain_{op}_s']:.2f} s",
                           r[f"docker_tls_{op}_s"] <= d[f"docker_plain_{op}_s"] * 1.05))
    return out


def tls_ceiling(work, clients, size, ca):
    """nginx serving one file over TLS to the same number of curl clients: the most a TLS
    fleet pull reaches on this machine with curl as the client"""
    path = os.path.join(work, "ceiling.bin")
    compare.random_file(path, size)
    st = compare.nginx_static_tls(work, free_port(), work)
    st.start()
    try:
        return compare.static_pull(st.port, "ceiling.bin", size, clients)
    finally:
        st.stop()
        os.unlink(path)


WORKLOADS = ["catalog", "tags", "gc", "gcs3", "fleet", "docker"]


def partial(json_path, meta, res):
    """the figures so far, in case a later workload fails"""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path + ".partial", "w") as f:
        json.dump({"meta": meta, "results": res}, f, indent=2)


def remove(path):
    """rm -rf: a few GB of small files go several times faster than with shutil.rmtree"""
    subprocess.run(["rm", "-rf", path], check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regate", default=os.path.join(REPO_ROOT, "target/release/regate"))
    ap.add_argument("--loadgen", default=os.path.join(REPO_ROOT, "target/release/examples/loadgen"))
    ap.add_argument("--quick", action="store_true", help="every size at 1/10 (about two minutes)")
    ap.add_argument("--dir", help="work directory (default: a new directory under target/, removed at the end)")
    ap.add_argument("--json", help="where to write the JSON (default: target/bench/scale-<time>.json)")
    ap.add_argument("--duration", type=int, help="seconds per rate measurement (default 5, --quick 2)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--repeat", type=int, default=1,
                    help="docker push/pull rounds, each on fresh registries; the rows are the medians (default 1)")
    ap.add_argument("--distribution", default="docker-registry",
                    help="the distribution binary to compare with (default: Debian's docker-registry, 2.8); "
                         "a 3.x `registry` binary runs the same rows")
    ap.add_argument("--gc-rounds", type=int, default=3,
                    help="gc runs per size and peer, each real one on a fresh copy; the rows are the medians (default 3)")
    ap.add_argument("--only", help="comma-separated workloads, of " + ",".join(WORKLOADS) + " (default: all)")
    a = ap.parse_args()
    global DIST
    DIST = a.distribution
    only = set(WORKLOADS if not a.only else a.only.split(","))
    if only - set(WORKLOADS):
        ap.error(f"unknown workloads: {','.join(sorted(only - set(WORKLOADS)))}")
    div = 10 if a.quick else 1
    meta = {"repositories": 10000 // div, "tags_per_repository": 5, "tags": 50000 // div,
            "gc_sizes": [10000 // div, 100000 // div], "fleet_clients": 50, "fleet_layer_mib": 100 // div,
            "docker_layers": 5, "docker_layer_mib": 4 if a.quick else 20}
    duration = a.duration or (2 if a.quick else 5)
    regate, loadgen = os.path.abspath(a.regate), os.path.abspath(a.loadgen)
    # the data is many small files: keep it on the project's disk (not a tmpfs /tmp)
    work = a.dir or tempfile.mkdtemp(prefix="scale-", dir=os.path.join(REPO_ROOT, "target"))
    os.makedirs(work, exist_ok=True)
    # the full run holds about 7 GB of small files at its peak (catalog, tags and gc roots)
    need = (1 if a.quick else 8) << 30
    if shutil.disk_usage(work).free < need:
        remove(work) if not a.dir else None
        sys.exit(f"scale: {work} has {shutil.disk_usage(work).free >> 20} MiB free; the run needs about {need >> 30} GiB")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = a.json or os.path.join(REPO_ROOT, "target", "bench", f"scale-{stamp}.json")
    res = {"regate": {}, "distribution": {}}
    try:
        log(f"work directory {work}")
        subprocess.run(["htpasswd", "-B", "-b", "-c", f"{work}/htpasswd", USER, PASSWORD], check=True,
                       capture_output=True)
        ca = f"{work}/tls.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth",
                        "-keyout", f"{work}/tls.key", "-out", ca], check=True, capture_output=True)
        if "catalog" in only:
            log("catalog")
            catalog_workload(regate, work, res, meta["repositories"], meta["tags_per_repository"], ca)
            partial(json_path, meta, res)
        if "tags" in only:
            log("tags")
            tags_workload(regate, loadgen, work, res, meta["tags"], duration, ca)
            partial(json_path, meta, res)
        if "gc" in only:
            log("gc")
            meta["gc_rounds"] = a.gc_rounds
            gc_workload(regate, work, res, meta["gc_sizes"], a.gc_rounds)
            partial(json_path, meta, res)
        if "gcs3" in only:
            log("gc on S3 (moto)")
            # 1/100 and 1/10 of the disk sizes (moto is one Python process holding every object in
            # memory; writing 10,000 blobs into it takes minutes)
            meta["gcs3_sizes"] = [max(100, n // 10) for n in meta["gc_sizes"][:1]] + [meta["gc_sizes"][0]]
            gc_s3_workload(regate, work, res, meta["gcs3_sizes"])
            partial(json_path, meta, res)
        if "fleet" in only:
            log("fleet: TLS ceiling (nginx static file, 50 curl clients)")
            layer = meta["fleet_layer_mib"] * MiB
            meta["tls_ceiling_mibps"] = tls_ceiling(work, meta["fleet_clients"], 3 * layer, ca)
            log("fleet")
            fleet_workload(regate, work, res, meta["fleet_clients"], meta["fleet_layer_mib"], ca)
            partial(json_path, meta, res)
        if "docker" in only:
            log("docker push/pull")
            meta["docker_repeat"] = max(1, a.repeat)
            docker_workload(regate, work, res, meta["docker_layers"], meta["docker_layer_mib"], ca, meta["docker_repeat"])
        meta.update({
            "when": datetime.datetime.now().isoformat(timespec="seconds"), "quick": a.quick,
            "rate_seconds": duration, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "kernel": platform.release(),
            "regate": subprocess.run([regate, "--version"], capture_output=True, text=True).stdout.strip(),
            "git": subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip(),
            "peers": {"regate": "TLS (rustls), token auth (ES256), fs storage",
                      "distribution": subprocess.run([DIST, "--version"], capture_output=True, text=True).stdout.strip()
                      + ", plain HTTP, no auth, access log off, fs storage"},
        })
        goals = targets(res, meta)
        out = {"meta": meta, "results": res, "targets": goals}
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
        print(table(res, meta))
        if meta.get("tls_ceiling_mibps"):
            print(f"\nTLS pull ceiling here: nginx serving a {3 * meta['fleet_layer_mib']} MiB file to "
                  f"{meta['fleet_clients']} curl clients: {compare.fmt(meta['tls_ceiling_mibps'])} MiB/s")
        print("\ntargets (issue #23):")
        for g in goals:
            print(f"  {'met   ' if g['met'] else 'MISSED'}  {g['target']}: {g['value']}")
        print(f"\n{'quick run (1/10 sizes); ' if a.quick else ''}load average at the end "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; JSON: {json_path}")
    finally:
        if not a.keep and not a.dir:
            log(f"removing {work}")
            remove(work)
        elif a.keep:
            log(f"kept {work}")


if __name__ == "__main__":
    main()
