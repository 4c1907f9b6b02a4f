#!/usr/bin/env bash
# One-time set-up, idempotent: lavapipe (CPU Vulkan, so WGSL kernels run without a GPU) and a
# virtual environment in .venv with bitswarm and its test extras. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null; then
    # Not fatal: without lavapipe the NumPy backend still runs everything; the wgpu tests then
    # skip, saying why.
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        mesa-vulkan-drivers libvulkan1 >/dev/null) || echo "setup: could not install lavapipe (mesa-vulkan-drivers)" >&2
  else
    echo "setup: no apt-get; install your OS's Vulkan loader + lavapipe (mesa) for the GPU-path tests" >&2
  fi
fi
if ! command -v iptables >/dev/null && ! [ -x /usr/sbin/iptables ] && command -v apt-get >/dev/null; then
  # The NAT-traversal tests (tests/federation/nat) build NAT routers with iptables MASQUERADE in
  # network namespaces. Not fatal: without it they skip, saying why.
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      iptables iproute2 >/dev/null) || echo "setup: could not install iptables (NAT tests will skip)" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
