#!/usr/bin/env bash
# Build the appliance's Raspberry Pi OS (bookworm, arm64) SD-card image with pi-gen.
#
#   FIRST_USER_PASS='...' [PUBKEY_SSH_FIRST_USER="$(cat ~/.ssh/id_ed25519.pub)"] \
#       images/pi-gen/build.sh
#
# Clones pi-gen at a pinned tag into $WORK (default /tmp/appliance-pi-gen), adds our stage
# (stage-appliance: scripts/install --root "${ROOTFS_DIR}" --no-start) after stage2 (Lite),
# writes pi-gen's config from ./config plus the first user's credentials, and runs pi-gen's
# build.sh (as root, on Debian/Ubuntu with pi-gen's dependencies) or, with USE_DOCKER=1, its
# build-docker.sh. The image lands in $WORK/pi-gen/deploy/.
#
# Environment:
#   PI_GEN_REF   pi-gen tag or commit (default below: a Raspberry Pi OS bookworm arm64 release)
#   PI_GEN_REPO  default https://github.com/RPi-Distro/pi-gen.git
#   WORK         where pi-gen is cloned and built (needs ~20 GB)
#   FIRST_USER_PASS  required: the `admin` login's password (console, sudo). There is no
#                default; pi-gen needs one when the first-boot rename wizard is off.
#   PUBKEY_SSH_FIRST_USER  optional: an ssh public key for `admin`; with it, ssh accepts keys
#                only (PUBKEY_ONLY_SSH=1).
#   APPLIANCE_PJSUA2  auto (default: build pjproject from source in the image), no
#   USE_DOCKER=1 build in pi-gen's Docker container instead of on this host
#
# NOT RUN in the environment this was written in (no GitHub access there): the pinned tag
# and the pi-gen run itself are unverified. See images/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

PI_GEN_REPO="${PI_GEN_REPO:-https://github.com/RPi-Distro/pi-gen.git}"
# Tags on pi-gen's arm64 branch are named after Raspberry Pi OS releases.
PI_GEN_REF="${PI_GEN_REF:-2025-05-13-raspios-bookworm-arm64}"
WORK="${WORK:-/tmp/appliance-pi-gen}"

die() { echo "pi-gen/build.sh: error: $*" >&2; exit 1; }

if [ -z "${FIRST_USER_PASS:-}" ]; then
    die "set FIRST_USER_PASS (and optionally PUBKEY_SSH_FIRST_USER): no image ships a default password"
fi
case "$WORK" in *" "*) die "WORK must not contain spaces (debootstrap)";; esac

mkdir -p "$WORK"
if [ ! -d "$WORK/pi-gen/.git" ]; then
    git clone --branch "$PI_GEN_REF" "$PI_GEN_REPO" "$WORK/pi-gen" \
        || git clone "$PI_GEN_REPO" "$WORK/pi-gen"
fi
git -C "$WORK/pi-gen" fetch --tags origin || true
git -C "$WORK/pi-gen" checkout --detach "$PI_GEN_REF"
echo "pi-gen at $(git -C "$WORK/pi-gen" rev-parse HEAD) ($PI_GEN_REF)"

# Our stage, with a copy of the checkout that scripts/install reads.
stage="$WORK/pi-gen/stage-appliance"
rm -rf "$stage"
cp -a "$here/stage-appliance" "$stage"
src="$stage/00-install-appliance/files/appliance-src"
mkdir -p "$src"
tar -C "$repo" -cf - --exclude=__pycache__ --exclude='*.pyc' \
    scripts/install appliance pyproject.toml uv.lock README.md systemd firmware-config \
    | tar -C "$src" -xf -

# Only our image: not the plain Lite image stage2 would also export.
touch "$WORK/pi-gen/stage2/SKIP_IMAGES"

{
    cat "$here/config"
    printf '\n# From the environment of images/pi-gen/build.sh:\n'
    printf 'FIRST_USER_PASS=%q\n' "$FIRST_USER_PASS"
    if [ -n "${PUBKEY_SSH_FIRST_USER:-}" ]; then
        printf 'PUBKEY_SSH_FIRST_USER=%q\nPUBKEY_ONLY_SSH=1\n' "$PUBKEY_SSH_FIRST_USER"
    fi
    [ -n "${APPLIANCE_PJSUA2:-}" ] && printf 'APPLIANCE_PJSUA2=%q\nexport APPLIANCE_PJSUA2\n' "$APPLIANCE_PJSUA2"
    true
} > "$WORK/pi-gen/config"
chmod 0600 "$WORK/pi-gen/config"

cd "$WORK/pi-gen"
if [ "${USE_DOCKER:-0}" = 1 ]; then
    ./build-docker.sh
else
    [ "$(id -u)" = 0 ] || die "pi-gen's build.sh runs as root (or set USE_DOCKER=1)"
    ./build.sh
fi
ls -l "$WORK/pi-gen/deploy/"
