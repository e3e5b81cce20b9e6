#!/usr/bin/env bash
# Builds the regate image from an already built binary, with no base image to pull: the runtime
# stage of deploy/Dockerfile (FROM scratch on), with the binary and the shared libraries it links
# copied in from this host. Usage: deploy/build-image.sh [BINARY] [TAG]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/release/regate}"
tag="${2:-regate:local}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/lib" "$ctx/etc" "$ctx/var/lib/regate" "$ctx/deploy/examples"
cp "$bin" "$ctx/regate"
for l in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  cp -L --parents "$l" "$ctx/lib/"
done
printf 'regate:x:65532:65532::/var/lib/regate:/sbin/nologin\n' > "$ctx/etc/passwd"
cp "$root/deploy/examples/container.yaml" "$ctx/deploy/examples/container.yaml"
# the runtime stage of deploy/Dockerfile, its build-stage paths mapped onto this context
sed -n '/^FROM scratch/,$p' "$root/deploy/Dockerfile" | sed 's#--from=build ##; s#/out/#./#' > "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
