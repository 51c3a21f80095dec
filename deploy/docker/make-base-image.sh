#!/usr/bin/env bash
# Builds the runtime base image of deploy/docker/Dockerfile from Debian packages alone,
# for hosts with no image registry: debootstrap's minbase variant of bookworm plus
# ca-certificates (and openssl, which it depends on), imported as one layer.
#
#   sudo deploy/docker/make-base-image.sh                  # -> ferry-base:bookworm
#   sudo deploy/docker/make-base-image.sh --mirror http://deb.example/debian my-base:12
#
# Needs root (debootstrap), debootstrap and docker. With a registry, any Debian 12
# (bookworm) or newer image will do as well: `--build-arg BASE=debian:bookworm-slim`.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: make-base-image.sh [--mirror URL] [--suite SUITE] [--force] [IMAGE]

  IMAGE       the tag to create (default ferry-base:bookworm)
  --mirror    the Debian mirror (default: $FERRY_DEBIAN_MIRROR, else the first
              deb.debian.org-style URI in /etc/apt/sources.list*, else
              http://deb.debian.org/debian)
  --suite     the Debian suite (default bookworm)
  --force     build even if IMAGE exists
EOF
}

image="ferry-base:bookworm"
suite="bookworm"
mirror="${FERRY_DEBIAN_MIRROR:-}"
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --mirror) mirror="$2"; shift 2 ;;
        --suite) suite="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "make-base-image.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) image="$1"; shift ;;
    esac
done

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists (use --force to build it again)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "make-base-image.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "make-base-image.sh: install debootstrap" >&2; exit 1; }

# The host's own Debian mirror: the main archive, not the security one.
if [ -z "$mirror" ]; then
    mirror="$(
        { grep -hsE '^(deb |URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
              /etc/apt/sources.list.d/*.sources || true; } |
            grep -oE 'https?://[^ ]+/debian/?' | grep -v -- '-security' | head -n 1
    )"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

root="$(mktemp -d /tmp/ferry-base.XXXXXX)"
# debootstrap mounts /proc and /sys inside the tree; it unmounts them itself, but not
# when it fails half way.
cleanup() {
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
    done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror"

# What a container does not need: package lists and caches, documentation, manual
# pages, translations, and the host-specific files Docker provides at run time.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/usr/share/lintian "$root"/usr/share/linda
: >"$root/etc/machine-id"
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
# apt inside the image: the same mirror, and no documentation on later installs.
echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-minimal" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF

tar --numeric-owner --xattrs -C "$root" -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase --include=ca-certificates $suite $mirror" \
        - "$image"
docker image ls "$image"
