#!/usr/bin/env bash
# Builds the local images the containerd tests need, as OCI layout tars (there is no image registry here):
# a static pause image (the sandbox image) and a busybox image. Idempotent: tars already built are kept.
#   usage: scripts/cri/build_images.sh [CACHE_DIR]   (default: $CCMKIT_CRI_IMAGES or ~/.cache/ccmkit/cri-images)
# The recipe lives in controlplane/kubelet/cri/containerd_testing.py, so tests and this script build alike.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec python3 -m controlplane.kubelet.cri.containerd_testing build-images "$@"
