#!/usr/bin/env bash
# Installs what the slow guest tests (tests/system/test_guest.py) need on top of scripts/setup.sh, and
# only what is missing: QEMU (qemu-system-x86, TCG is enough) and libvirt as Debian ships it
# (libvirt-daemon-system: libvirtd, virtlogd, the libvirt-qemu user), then fetches and builds the
# guest (a Debian kernel, busybox, mke2fs) into tests/data/guest-cache (BLOCKSTORE_GUEST_CACHE).
# The tests start libvirtd and virtlogd themselves when none runs (a machine without systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

DEB_PACKAGES=(qemu-system-x86 libvirt-daemon-system libvirt-clients libxml2-utils)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
if ((${#missing[@]})); then
    echo "setup-guest: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # Without recommends: no firewall, dnsmasq or GUI; the tests need no network.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# On a machine without udev, /dev/kvm stays root:root 0600 instead of Debian's root:kvm 0660.
# libvirt 9.0 then finds its cached QEMU capabilities stale on every call ("KVM was enabled when
# probing, but it is not available now") and probes QEMU again: about 30 s per virsh define/start.
# Apply Debian's udev rule (50-udev-default.rules: KERNEL=="kvm", GROUP="kvm", MODE="0660").
if [[ -c /dev/kvm ]] && [[ $(stat -c %G /dev/kvm) != kvm ]] && getent group kvm >/dev/null; then
    echo "setup-guest: /dev/kvm to root:kvm 0660, as Debian's udev rule sets it"
    $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm
fi

# The guest's packages are fetched with apt-get download: the package lists must be there.
apt-cache show linux-image-cloud-amd64 busybox-static >/dev/null 2>&1 || $SUDO apt-get update -qq
.venv/bin/python -c "from tests.support.guestimage import build_guest_image as b; print('setup-guest:', b())"
