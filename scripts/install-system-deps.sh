#!/usr/bin/env bash
# Installs the Debian packages ccmkit's tests and benchmarks drive for real: etcd (the etcd store backend),
# containerd + runc + CNI plugins (the remote CRI runtime), busybox-static + umoci + gcc (to build local images;
# there is no registry), wrk and GNU time (benchmarks). Skips apt entirely when everything is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(etcd-server containerd runc containernetworking-plugins busybox-static umoci gcc libc6-dev iptables
          iproute2 wrk time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
