#!/usr/bin/env bash
# Builds the container image (deploy/docker/Dockerfile): compiles a statically linked shepherd
# (glibc with crt-static, profile `image`: optimized, stripped), gathers the build context in
# target/image/ (the binary, this machine's CA bundle, the starter config, an empty data folder)
# and runs `podman build` (or `docker build`). Prints the image's size.
#   scripts/image.sh [TAG]          default TAG: shepherd:dev
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-shepherd:dev}"
engine="${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
if [ -z "$engine" ]; then
  echo "scripts/image.sh: needs podman or docker (apt-get install podman)" >&2
  exit 1
fi
target="$(rustc -vV | sed -n 's/^host: //p')"
echo "== building a static shepherd for $target"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --profile image --target "$target" --target-dir target/static -p shepherd
binary="target/static/$target/image/shepherd"
if ! ldd "$binary" 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then
  echo "scripts/image.sh: $binary is not static" >&2
  exit 1
fi
context=target/image
rm -rf "$context" && mkdir -p "$context/data"
cp "$binary" "$context/shepherd"
cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
cp deploy/docker/shepherd.yaml "$context/shepherd.yaml"
echo "== $engine build -t $tag"
# podman writes OCI images by default, which have no HEALTHCHECK: ask for the Docker format.
format=()
case "$(basename "$engine")" in podman*) format=(--format docker) ;; esac
"$engine" build --quiet "${format[@]}" -t "$tag" -f deploy/docker/Dockerfile "$context" >/dev/null
size=$("$engine" image inspect "$tag" --format '{{.Size}}')
echo "$tag: $((size / 1000000)) MB ($size bytes)"
