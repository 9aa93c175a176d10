#!/usr/bin/env bash
# Builds the base images that docker/Dockerfile and docker/mosquitto/Dockerfile start FROM, out of
# Debian packages, and tags them with the very names those Dockerfiles use — so the same
# Dockerfiles build on a machine with a registry (which has these images) and on one without.
#
#   debian:bookworm-slim      debootstrap --variant=minbase bookworm, docs and caches removed
#   rust:1.95-slim-bookworm   the same + gcc, libc6-dev, ca-certificates (what the official
#                             rust:*-slim image carries) + the Rust 1.95 toolchain of this host
#                             (Debian's rustc is too old for DataFusion; rustup's dist server is
#                             not reachable here, so the toolchain the host already has is copied;
#                             its CA bundle is the host's, so cargo trusts a registry proxy's CA)
#
# Usage: docker/base-image.sh [--force]   (images that already exist are kept unless --force)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
slim_tag=debian:bookworm-slim
rust_version=1.95
rust_tag=rust:${rust_version}-slim-bookworm

have_image() { [ "$force" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$slim_tag" && have_image "$rust_tag"; then
    echo "base-image: $slim_tag and $rust_tag exist (use --force to rebuild)"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    echo "base-image: installing debootstrap"
    apt-get install -y -q debootstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi

work=$(mktemp -d /tmp/talo-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Remove what a container never needs and keep later apt installs from adding it back
# (the same trimming the official -slim images do).
slim_down() {
    local root=$1
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
    echo 'APT::Install-Recommends "false"; APT::Install-Suggests "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/*.log "$root"/tmp/* "$root"/usr/share/lintian
}

import() {
    local root=$1 tag=$2
    shift 2
    tar -C "$root" --numeric-owner -c . | docker import "$@" - "$tag" >/dev/null
    echo "base-image: $tag $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

echo "base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase "$suite" "$work/slim" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
# the same sources the official image has, so `apt-get update` inside a build works
cat >"$work/slim/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SRC
slim_down "$work/slim"
import "$work/slim" "$slim_tag" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]'

# the build image: the slim root + a C toolchain (ring and zstd build C) + the Rust toolchain
sysroot=$(rustc +"$rust_version" --print sysroot 2>/dev/null || rustc --print sysroot)
case "$("$sysroot/bin/rustc" --version)" in
    "rustc $rust_version".*) ;;
    *) echo "base-image: need a Rust $rust_version toolchain on the host, found $("$sysroot/bin/rustc" --version)" >&2; exit 1 ;;
esac
cp -a "$work/slim" "$work/rust"
cp /etc/resolv.conf "$work/rust/etc/resolv.conf"
chroot "$work/rust" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev ca-certificates' \
    >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; exit 1; }
: >"$work/rust/etc/resolv.conf"
# cargo inside a build trusts what this host trusts (a registry proxy may sign with its own CA)
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$work/rust/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$work/rust/usr/local/rust"
cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/usr/local/rust/"
rm -rf "$work/rust/usr/local/rust/lib/rustlib/src" "$work/rust/usr/local/rust/lib/rustlib/rustc-src"
slim_down "$work/rust"
import "$work/rust" "$rust_tag" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["bash"]'
