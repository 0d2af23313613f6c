#!/usr/bin/env bash
# Build a Debian bookworm arm64 root file system with the appliance preinstalled, on an x86-64
# (or arm64) Debian 12 host, with debootstrap --foreign and qemu-user-static. Run as root.
#
#   images/build-rootfs.sh [--out DIR] [--mirror URL] [--suite SUITE] [--no-install]
#                          [--with-pjsua2=no|source] [--tarball FILE]
#
# Stages (each skipped when its stamp file in DIR says it is done, so a re-run resumes):
#   1. debootstrap --foreign --arch=arm64  (downloads and unpacks the .debs, on the host)
#   2. debootstrap --second-stage          (runs the arm64 maintainer scripts under qemu)
#   3. base configuration                  (hostname, DHCP on eth0 via systemd-networkd, apt
#                                           sources, locale-free minimal settings)
#   4. scripts/install --root DIR --no-start  (the appliance, as on a real Pi)
#   5. optionally a tarball of the tree    (--tarball FILE)
#
# The result is a root file system, not a bootable SD-card image: a Pi also needs a boot
# partition with the Raspberry Pi firmware, a kernel and an fstab. The pi-gen route
# (images/pi-gen/) produces the bootable image; see images/README.md.
#
# Needs: debootstrap, qemu-user-static and binfmt-support with the qemu-aarch64 handler
# registered with the F (fix-binary) flag, which Debian's qemu-user-static does:
#   apt-get install -y debootstrap qemu-user-static binfmt-support
#   update-binfmts --enable qemu-aarch64
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

out=/tmp/appliance-rootfs
mirror=""
suite=bookworm
do_install=1
pjsua2=no
tarball=""

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        --mirror) mirror="$2"; shift 2 ;;
        --mirror=*) mirror="${1#*=}"; shift ;;
        --suite) suite="$2"; shift 2 ;;
        --suite=*) suite="${1#*=}"; shift ;;
        --no-install) do_install=0; shift ;;
        --with-pjsua2=*) pjsua2="${1#*=}"; shift ;;
        --tarball) tarball="$2"; shift 2 ;;
        --tarball=*) tarball="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-rootfs: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf 'build-rootfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install -y debootstrap"

# The Debian mirror this host's apt already uses (the only one reachable in some build
# sandboxes); http://deb.debian.org/debian otherwise.
if [ -z "$mirror" ]; then
    mirror="$(grep -rhoE '(URIs:|^deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
                 /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
              | grep -oE 'https?://[^[:space:]]+' | grep -v -- '-security' | head -n 1 || true)"
    mirror="${mirror%/}"
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

host_arch="$(dpkg --print-architecture)"
if [ "$host_arch" != arm64 ]; then
    [ -x /usr/bin/qemu-aarch64-static ] \
        || die "qemu-user-static missing: apt-get install -y qemu-user-static binfmt-support"
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?)"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 || die "cannot register the qemu-aarch64 binfmt handler"
    fi
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "the qemu-aarch64 binfmt handler lacks the F flag: arm64 programs would not run in a chroot"
fi

# Base packages: a systemd system you can log in to over the network and find by name.
# python3/python3-venv/openssl/flite/sox/ca-certificates are also what scripts/install asks for,
# so its apt step only confirms them.
include=(
    systemd-sysv udev dbus kmod iproute2 iputils-ping netbase
    systemd-timesyncd systemd-resolved avahi-daemon libnss-mdns openssh-server sudo less nano
    ca-certificates openssl python3 python3-venv flite sox
)
includes="$(IFS=,; echo "${include[*]}")"

mkdir -p "$out"
stamp() { [ -e "$out/.build-rootfs.$1" ]; }
mark() { date -u +%FT%TZ > "$out/.build-rootfs.$1"; }

if ! stamp stage1; then
    log "stage 1: debootstrap --foreign --arch=arm64 $suite from $mirror into $out"
    debootstrap --foreign --arch=arm64 --variant=minbase --components=main \
        --include="$includes" "$suite" "$out" "$mirror"
    mark stage1
fi

if ! stamp stage2; then
    log "stage 2: debootstrap --second-stage (arm64 maintainer scripts under qemu; slow)"
    if [ "$host_arch" != arm64 ]; then
        # Not needed with the F flag, but harmless and helps hosts without it.
        install -m 0755 /usr/bin/qemu-aarch64-static "$out/usr/bin/qemu-aarch64-static"
    fi
    chroot "$out" /debootstrap/debootstrap --second-stage
    mark stage2
fi

if ! stamp stage3; then
    log "stage 3: base configuration"
    echo appliance > "$out/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tappliance\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        > "$out/etc/hosts"
    cat > "$out/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $suite main non-free-firmware
deb http://deb.debian.org/debian $suite-updates main non-free-firmware
deb http://deb.debian.org/debian-security $suite-security main non-free-firmware
EOF
    mkdir -p "$out/etc/systemd/network"
    cat > "$out/etc/systemd/network/10-wired.network" <<'EOF'
# DHCP on the wired port; the box announces itself as appliance.local (avahi).
[Match]
Name=eth* en*

[Network]
DHCP=yes
MulticastDNS=no
EOF
    chroot "$out" systemctl enable systemd-networkd.service systemd-timesyncd.service
    # No root password: log in over ssh with a key (put one in /root/.ssh/authorized_keys
    # before writing the image) or on the console after setting one with chroot + passwd.
    mark stage3
fi

if [ "$do_install" = 1 ]; then
    log "stage 4: scripts/install --root $out --no-start --with-pjsua2=$pjsua2"
    "$here/scripts/install" --root "$out" --no-start --with-pjsua2="$pjsua2"
    mark stage4
fi

if [ "$host_arch" != arm64 ]; then
    rm -f "$out/usr/bin/qemu-aarch64-static"
fi
# apt's downloaded lists and caches (~100 MB): `apt-get update` on the device brings them back.
rm -rf "$out/var/cache/apt/archives/"*.deb "$out/var/cache/apt/"*.bin "$out/var/lib/apt/lists/"*_* \
    2>/dev/null || true

if [ -n "$tarball" ]; then
    log "stage 5: tarball $tarball"
    tar --numeric-owner --xattrs -C "$out" --exclude='./.build-rootfs.*' -caf "$tarball" .
fi
log "done: $out ($(du -sh --exclude=proc "$out" 2>/dev/null | cut -f1))"
