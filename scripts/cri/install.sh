#!/usr/bin/env bash
# Installs what the CRI layer and its tests need on a Debian machine, as root: containerd, runc, the CNI plugins,
# busybox-static and umoci (to build images locally), gcc (for the static pause binary), iptables/iproute2 (CNI
# bridge and portmap), then the Python gRPC stubs. Then builds the test images into the cache.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    containerd runc containernetworking-plugins busybox-static umoci gcc libc6-dev iptables iproute2
# container-runtime-interface-api 2.0.1 pins protobuf<7 (its stubs are generated with protobuf 6.31).
python3 -m pip install "container-runtime-interface-api>=2.0.1" "grpcio>=1.60" "websockets>=15"
"$(dirname "${BASH_SOURCE[0]}")/build_images.sh" "$@"
