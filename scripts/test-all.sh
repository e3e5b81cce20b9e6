#!/usr/bin/env bash
# Runs every regate test on a fresh Debian machine: installs what the tests need when it is
# missing, builds, and runs the unit and integration suites.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# headless browser for the Gitee sign-in test (tests/gitee.rs, tests/browser/)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# replicas sharing rate limits (tests/redis.rs)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
python3 -c 'import selenium' 2>/dev/null || python3 -m pip install -q selenium
# the S3 server the object-storage tests run regate against (tests/object_storage.rs)
python3 -c 'import moto.server, flask_cors' 2>/dev/null || python3 -m pip install -q 'moto[server]'
# the Git LFS server the lfs backend tests run regate against (tests/lfs.rs); giftless 0.6.2's
# wheel declares no dependencies, so they are named here
# (importing giftless's app creates ./lfs-storage, so the check runs in a throw-away directory)
giftless_check=$(mktemp -d)
if ! (cd "$giftless_check" && python3 -c 'import giftless.wsgi_entrypoint' 2>/dev/null); then
  python3 -m pip install -q 'giftless==0.6.2' flask \
    flask-marshmallow 'marshmallow<4' figcan flask-classful webargs pyyaml pyjwt
fi
rm -rf "$giftless_check"
# skopeo needs a policy; Debian's package ships one, a bare container may not.
if [ ! -f /etc/containers/policy.json ] && [ ! -f "${HOME}/.config/containers/policy.json" ]; then
  mkdir -p "${HOME}/.config/containers"
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "${HOME}/.config/containers/policy.json"
fi

if docker info >/dev/null 2>&1; then
  echo "Docker engine available: docker login/push/pull tests will run"
else
  echo "no Docker engine: docker tests will say so and skip; skopeo tests still run"
fi

# formatting is part of the contract of every commit
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check || { echo "cargo fmt --check failed: run cargo fmt"; exit 1; }
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: one failing test binary must not hide the results of the others
set +e
cargo test --no-fail-fast --lib --bins --tests -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# Fuzz the path classifier and the scope parser for a short, fixed time (cargo-fuzz on stable:
# RUSTC_BOOTSTRAP enables the flags libFuzzer needs; no sanitizer, the targets assert invariants).
if [ "${SKIP_FUZZ:-0}" != "1" ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  for target in route scope; do
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -s none -- -max_total_time="${FUZZ_SECONDS:-20}" 2>&1 | tail -n 2)
  done
  echo "fuzz: route and scope ran ${FUZZ_SECONDS:-20}s each without a failure"
fi

# one closing line over every cargo test binary
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the failures above"
  grep -E '^test .* FAILED$|^---- .* stdout ----$' "$log" | sort -u || true
fi
exit "$status"
