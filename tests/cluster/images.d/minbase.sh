#!/usr/bin/env bash
# Debian bookworm root filesystem for the base-image stand-ins, as a tar on stdout's path $1:
# `debootstrap --variant=minbase` from Debian's mirror, then slimmed the way the official
# debian:bookworm-slim image is (debuerreotype's "slimify": no docs, man pages or locales, and
# a dpkg configuration that keeps them out of later installs). The stand-in Containerfiles
# (python.Containerfile, rust.Containerfile) start FROM scratch with this tar.
#
#   minbase.sh OUT.tar [MIRROR]      (root; runs debootstrap in a private mount namespace)
set -euo pipefail
out="$1"
mirror="${2:-http://deb.debian.org/debian}"
work="$(mktemp -d "${out}.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

# debootstrap mounts /proc and /sys inside the target: keep those mounts out of the host's table.
unshare --mount --propagation private \
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log" >&2; echo "minbase: debootstrap failed (log above)" >&2; exit 1; }

# The package sources of the official image (deb822, with updates and security).
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Slim, as debian:bookworm-slim: dpkg leaves documentation and locales out from now on ...
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
# ... and what debootstrap already installed goes too.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,groff,info,lintian,linda}/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# Downloaded packages, package lists and files copied from this host do not belong in an image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
       "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/hosts"
find "$root/dev" -mindepth 1 -delete   # the runtime provides /dev

tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$out.part" .
mv "$out.part" "$out"
