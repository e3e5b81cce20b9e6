#!/usr/bin/env bash
# Builds the regate image from an already built binary, with no base image to pull: FROM scratch
# with the binary and the shared libraries it links copied in (the same runtime stage as
# deploy/Dockerfile). Usage: deploy/build-image.sh [BINARY] [TAG]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/regate}"
tag="${2:-regate:local}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/lib" "$ctx/etc" "$ctx/var/lib/regate"
cp "$bin" "$ctx/regate"
for l in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  cp -L --parents "$l" "$ctx/lib/"
done
printf 'regate:x:65532:65532::/var/lib/regate:/sbin/nologin\n' > "$ctx/etc/passwd"
cp "$root/deploy/examples/container.yaml" "$ctx/regate.yaml"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY lib/ /
COPY etc/passwd /etc/passwd
COPY regate /regate
COPY regate.yaml /etc/regate/regate.yaml
COPY --chown=65532:65532 var/ /var/
USER 65532:65532
VOLUME /var/lib/regate
EXPOSE 5000
ENV REGATE_CONFIG=/etc/regate/regate.yaml
HEALTHCHECK --interval=2s --timeout=5s --retries=3 CMD ["/regate", "healthcheck", "--url", "http://127.0.0.1:5000/healthz"]
ENTRYPOINT ["/regate"]
CMD ["serve"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
