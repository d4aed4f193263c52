#!/usr/bin/env bash
# Sets up a fresh Debian machine for ccmkit's tests and runs them: system packages, the Python package with its
# test extras, the locally built CRI images, then pytest. Extra arguments go to pytest.
#   usage: ./scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-system-deps.sh
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
if [ -x scripts/cri/build_images.sh ]; then
    ./scripts/cri/build_images.sh >/dev/null
fi
exec python3 -m pytest -q -p no:cacheprovider "$@"
