#!/usr/bin/env bash
# Makes the image the Dockerfile builds FROM when no image registry is reachable: Debian bookworm (minbase)
# with python3 (3.11) from apt, made by debootstrap and imported into podman as $BASE_IMAGE.
#
#   container/base-image.sh   # prints the image's name; a no-op when it exists, else imports the cached
#                             # tarball, else runs debootstrap (~1.5 min) and caches the tarball
#
# The root filesystem is cached as container/cache/base-bookworm-r<RECIPE>.tar (gitignored), so a fresh podman
# store imports it in seconds. Bump RECIPE when the recipe below changes: that makes a new base. The image is
# tagged :bookworm-r<RECIPE> and :bookworm (the Dockerfile's default BASE). The cached tarball keeps
# the security updates of the day it was made: to take newer ones, delete container/cache/ and remove the
# image (container/podman rmi localhost/flight-writer-base:bookworm-r1), or bump RECIPE.
# Needs root, debootstrap and podman. MIRROR overrides the Debian mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
RECIPE=1
NAME=localhost/flight-writer-base
BASE_IMAGE=$NAME:$SUITE-r$RECIPE
CACHE=$here/cache/base-$SUITE-r$RECIPE.tar
PODMAN=${PODMAN:-$here/podman}

if $PODMAN image exists "$BASE_IMAGE"; then
    $PODMAN tag "$BASE_IMAGE" "$NAME:$SUITE"
    echo "$BASE_IMAGE"
    exit 0
fi

if [[ ! -s $CACHE ]]; then
    mkdir -p "$here/cache"
    root=$(mktemp -d /tmp/flight-writer-base.XXXXXX)
    log=$here/cache/base-$SUITE.log
    echo "base-image: debootstrap $SUITE (minbase + python3) into $root, log in $log" >&2
    trap 'status=$?; rm -rf "$root"; [[ $status = 0 ]] || tail -30 "$log" >&2' EXIT
    # ca-certificates: TLS to object storage (S3, Azure, GCS) from the server
    debootstrap --variant=minbase --include=python3,ca-certificates "$SUITE" "$root" "$MIRROR" >"$log" 2>&1
    # security and point-release updates too, then everything an image does not need
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    chroot "$root" /bin/sh -ec '
        export DEBIAN_FRONTEND=noninteractive
        apt-get -qq -o APT::Sandbox::User=root update
        apt-get -qq -y -o APT::Sandbox::User=root upgrade
        apt-get clean
        rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /tmp/* \
            /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian
    ' >>"$log" 2>&1
    # a container has no devices of its own to keep; podman mounts /dev, /proc and /sys
    rm -rf "$root"/dev/* "$root"/proc/* "$root"/sys/*
    rm -f "$here"/cache/base-*.tar   # older recipes
    tar --numeric-owner -C "$root" -cf "$CACHE.tmp" .
    mv "$CACHE.tmp" "$CACHE"
fi

echo "base-image: importing $CACHE as $BASE_IMAGE" >&2
$PODMAN import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$CACHE" "$BASE_IMAGE" >/dev/null
$PODMAN tag "$BASE_IMAGE" "$NAME:$SUITE"
echo "$BASE_IMAGE"
