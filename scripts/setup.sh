#!/usr/bin/env bash
# Everything a fresh machine needs before `cargo build`: Debian packages,
# libtorch (via the PyTorch wheel), crates. Idempotent and quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a C/C++ toolchain for torch-sys and bundled SQLite;
# headless Chromium for the report rendering test (tests/report_chromium.rs).
need_apt=()
for pkg in build-essential pkg-config chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: apt-get install ${need_apt[*]}"
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

scripts/bootstrap-libtorch.sh
scripts/fetch-models.sh
scripts/bootstrap-llama-cpp.sh
cargo fetch --quiet
