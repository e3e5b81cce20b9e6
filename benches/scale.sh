#!/usr/bin/env bash
# regate vs distribution as the work grows (issue #23): 10,000 repositories, a repository with
# 50,000 tags, gc over 100,000 blobs (and 10,000 on moto's S3 server), a fleet of 50 CI clients, and the real docker client.
#
#   bash benches/scale.sh            # full run (a few GB of small files under target/, removed after)
#   bash benches/scale.sh --quick    # every size at 1/10
#
# Options are passed to benches/scale.py (see `--help`): --quick, --dir DIR, --json FILE,
# --duration SECS, --keep, --only catalog,tags,gc,gcs3,fleet,docker, --repeat N (docker push/pull
# rounds on fresh registries, rows are medians). Prints one table with ratios and the
# issue's targets, and writes the same figures as JSON (target/bench/scale-<time>.json).
# Needs what compare.sh needs (docker-registry nginx skopeo apache2-utils openssl curl python3) and
# GNU time (peak RSS of the gc runs), and
# uses the Docker engine when one answers (run as root: it writes /etc/docker/certs.d/<host>/ca.crt
# for the TLS rows and removes it after).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in docker-registry:docker-registry nginx:nginx skopeo:skopeo \
    htpasswd:apache2-utils openssl:openssl curl:curl python3:python3 /usr/bin/time:time; do
    bin=${pair%%:*} pkg=${pair##*:}
    if ! command -v "$bin" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$bin" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scale.sh: installing ${need[*]}" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null \
            || { echo "scale.sh: missing ${need[*]} and apt-get failed; install them and re-run" >&2; exit 1; }
    else
        echo "scale.sh: missing Debian packages: ${need[*]} (apt-get install -y ${need[*]})" >&2
        exit 1
    fi
fi

echo "scale.sh: cargo build --release (regate and the load generator)" >&2
cargo build --release --quiet --bin regate --example loadgen
t=${CARGO_TARGET_DIR:-target}
exec python3 benches/scale.py --regate "$t/release/regate" --loadgen "$t/release/examples/loadgen" "$@"
