#!/usr/bin/env bash
# Build the container image from ./Containerfile with buildah (no Docker engine) and write it as an
# OCI archive. Needs root or a rootless buildah set-up; installs buildah and mmdebstrap with apt-get
# when they are missing and we are root.
#
#   scripts/build-image.sh [TAG]      -> dist/streams-image.oci.tar, image localhost/streams:TAG
#
# The Debian base root filesystem is made once with mmdebstrap and cached outside the checkout
# (STREAMS_TOOLS_CACHE, default ~/.cache/streams); buildah's storage lives there too (vfs driver).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
CACHE=${STREAMS_TOOLS_CACHE:-$HOME/.cache/streams}/image
MIRROR=${STREAMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$CACHE" dist

if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
        echo "error: buildah and mmdebstrap are needed (apt-get install buildah mmdebstrap)" >&2; exit 1
    fi
    echo "installing buildah and mmdebstrap (apt-get) ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap >/dev/null
fi

if [ ! -s "$CACHE/base.tar" ]; then
    echo "making the Debian 12 base root filesystem (mmdebstrap, once) ..."
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' bookworm "$CACHE/base.partial.tar" "$MIRROR"
    mv "$CACHE/base.partial.tar" "$CACHE/base.tar"
fi

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
echo "collecting wheels (the project and its dependencies, binary only) ..."
"$PY" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels" --only-binary=:all: --no-binary=streams . 
ln "$CACHE/base.tar" "$CONTEXT/base.tar" 2>/dev/null || cp "$CACHE/base.tar" "$CONTEXT/base.tar"
cp Containerfile "$CONTEXT/"

STORE=(--storage-driver vfs --root "$CACHE/storage" --runroot "$CACHE/run")
echo "building localhost/streams:$TAG ..."
buildah "${STORE[@]}" bud --quiet --isolation chroot --layers=false -f "$CONTEXT/Containerfile" \
    -t "localhost/streams:$TAG" "$CONTEXT"
rm -f dist/streams-image.oci.tar
buildah "${STORE[@]}" push --quiet "localhost/streams:$TAG" "oci-archive:dist/streams-image.oci.tar:localhost/streams:$TAG"
echo "image localhost/streams:$TAG: dist/streams-image.oci.tar ($(du -h dist/streams-image.oci.tar | cut -f1) compressed layers)"
buildah "${STORE[@]}" inspect --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "localhost/streams:$TAG"
