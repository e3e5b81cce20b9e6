#!/usr/bin/env bash
# regate vs distribution vs nginx+auth_request+distribution, side by side, in one run.
#
#   bash benches/compare.sh            # full run (1 GiB blobs, 300 MiB image, 5 GiB stream)
#   bash benches/compare.sh --quick    # smoke run with small sizes (about a minute)
#
# Options are passed to benches/compare.py (see `--help`): --quick, --dir DIR, --json FILE,
# --duration SECS, --keep, --h2. Prints one table and writes the same figures as JSON.
# Needs: docker-registry nginx skopeo apache2-utils (htpasswd) openssl curl python3;
# installs the missing ones with apt-get when run as root, otherwise says which are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in docker-registry:docker-registry nginx:nginx skopeo:skopeo \
    htpasswd:apache2-utils openssl:openssl curl:curl python3:python3; do
    bin=${pair%%:*} pkg=${pair##*:}
    if ! command -v "$bin" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$bin" ]; then need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "compare.sh: installing ${need[*]}" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null \
            || { echo "compare.sh: missing ${need[*]} and apt-get failed; install them and re-run" >&2; exit 1; }
    else
        echo "compare.sh: missing Debian packages: ${need[*]} (apt-get install -y ${need[*]})" >&2
        exit 1
    fi
fi

echo "compare.sh: cargo build --release (regate and the load generator)" >&2
cargo build --release --quiet --bin regate --example loadgen
t=${CARGO_TARGET_DIR:-target}
exec python3 benches/compare.py --regate "$t/release/regate" --loadgen "$t/release/examples/loadgen" "$@"
