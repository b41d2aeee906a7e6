#!/usr/bin/env bash
# Makes libtorch 2.11.0 available to the build, idempotently.
#
# tch 0.24 links against libtorch 2.11.0. We take it from the PyTorch wheel
# (`pip install torch==2.11.0`) in a virtual environment, because that wheel is
# the same build the GPU machines run, so binaries built here run there.
#
# The venv lives in a per-user cache shared by every clone and worktree
# (override with BITNET_TORCH_VENV); `.venv` in the repo is a symlink to it.
# A user who already has libtorch sets LIBTORCH: `.libtorch` then points at
# it, and the venv is still made, because the export checks and their tests
# run transformers and gguf-py, which need Python torch (set
# BITNET_SKIP_VENV=1 to skip it; `make test`'s export tests then fail).
#
# Prints nothing on the fast path except one line naming the torch in use.
set -euo pipefail

TORCH_VERSION="2.11.0"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"

if [[ -n "${LIBTORCH:-}" ]]; then
  [[ -d "$LIBTORCH/lib" ]] || { echo "error: LIBTORCH=$LIBTORCH has no lib/ folder; unset it to let this script install torch==${TORCH_VERSION}" >&2; exit 2; }
  ln -sfn "$LIBTORCH" "$repo_root/.libtorch"
  echo "libtorch: using LIBTORCH=${LIBTORCH}"
  if [[ -n "${BITNET_SKIP_VENV:-}" ]]; then
    echo "libtorch: BITNET_SKIP_VENV set: no Python venv (export verification and its tests need one)"
    exit 0
  fi
fi

venv="${BITNET_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bitnet-pipeline/torch-${TORCH_VERSION}}"

installed_version() {
  "$venv/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
print(m.version("torch").split("+")[0])
PY
}

if [[ "$(installed_version)" != "$TORCH_VERSION" ]]; then
  echo "libtorch: installing torch==${TORCH_VERSION} into ${venv} (about 1 minute, 4.6 GB)"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}" numpy safetensors
fi
# gguf-py writes the GGUF test fixtures and is the reference the Rust reader's
# dequantization is checked against (crates/bitnet-torch/src/checkpoint/gguf/).
GGUF_PY_VERSION="0.19.0"
if ! "$venv/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('gguf')!='${GGUF_PY_VERSION}')" 2>/dev/null; then
  echo "libtorch: installing gguf==${GGUF_PY_VERSION} into ${venv}"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "gguf==${GGUF_PY_VERSION}"
fi

# The engines the `export` stage verifies against (its tests use them too):
# transformers loads HF BitNet exports (its BitNet quantizer needs
# accelerate), gguf-py reads GGUF exports. Pinned: the checks were written
# against these versions' BitNet layers and quant layouts.
EXPORT_PINS=("transformers==5.24.0" "accelerate==1.15.0" "gguf==0.19.0")
missing_pins() {
  "$venv/bin/python" - "${EXPORT_PINS[@]}" <<'PY' 2>/dev/null || printf '%s\n' "${EXPORT_PINS[@]}"
import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = None
    if have != want:
        print(pin)
PY
}
mapfile -t need_pins < <(missing_pins)
if ((${#need_pins[@]})); then
  echo "engines: installing ${need_pins[*]} into ${venv} (about 30 s)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${need_pins[@]}"
fi

# `.venv` in the repo points at the shared venv so scripts and the Makefile
# have one stable path to use.
if [[ ! -e "$repo_root/.venv" || -L "$repo_root/.venv" ]]; then
  ln -sfn "$venv" "$repo_root/.venv"
fi
# `.libtorch` points at the torch package folder (include/ and lib/), which
# .cargo/config.toml hands to torch-sys as LIBTORCH and build.rs uses for
# the rpath.
# With LIBTORCH set it already points at the user's libtorch.
if [[ -z "${LIBTORCH:-}" ]]; then
  torch_dir="$("$venv/bin/python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')"
  ln -sfn "$torch_dir" "$repo_root/.libtorch"
  echo "libtorch: torch $(installed_version) at ${torch_dir}"
else
  echo "engines: Python torch $(installed_version) in ${venv} (for export checks and tests)"
fi
