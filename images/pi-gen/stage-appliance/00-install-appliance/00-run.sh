#!/bin/bash -e
# pi-gen sub-stage, run on the build host with ROOTFS_DIR set (cwd: this directory).
# images/pi-gen/build.sh copied the appliance checkout into files/appliance-src.
# scripts/install sees a Debian root and runs apt and uv inside it (chroot under qemu), so the
# venv is built for arm64 at /opt/appliance/.venv; --root never starts anything, it only
# enables appliance.service for the first boot.
./files/appliance-src/scripts/install --root "${ROOTFS_DIR}" --no-start \
	--with-pjsua2="${APPLIANCE_PJSUA2:-auto}"
