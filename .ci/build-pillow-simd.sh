#!/usr/bin/env bash
# Replace Pillow with pillow-simd (same `PIL` package, SIMD resize/convert). pip cannot say
# "pillow or pillow-simd", so the dependency tree brings Pillow and this swaps it afterwards.
# The wheel is built once (about a minute) and kept in ~/.cache/vlfusion/wheels for later installs.
# Where the build fails (no AVX2, no compiler or headers) we keep Pillow and say so in one line.
set -uo pipefail
PY=${1:-.venv/bin/python}
WHEELS=${VLFUSION_WHEEL_CACHE:-$HOME/.cache/vlfusion/wheels}
version() { $PY -c 'import PIL; print(PIL.__version__)' 2>/dev/null; }
if [[ "$(version)" == *.post* ]]; then
  echo "pillow-simd: already active ($(version))"; exit 0
fi
mkdir -p "$WHEELS"
log="$WHEELS/build.log"
wheel=$(ls "$WHEELS"/pillow_simd-*.whl 2>/dev/null | tail -n 1)
if [ -z "$wheel" ] && grep -q avx2 /proc/cpuinfo; then
  CC="cc -mavx2" $PY -m pip wheel -q --no-deps --no-binary pillow-simd pillow-simd -w "$WHEELS" >"$log" 2>&1
  wheel=$(ls "$WHEELS"/pillow_simd-*.whl 2>/dev/null | tail -n 1)
fi
if [ -n "$wheel" ]; then
  old=$($PY -m pip show pillow 2>/dev/null | awk '/^Version:/{print $2}')
  # Both distributions own PIL/: remove Pillow's files first, then install pillow-simd.
  $PY -m pip uninstall -q -y pillow >/dev/null 2>&1
  if ! $PY -m pip install -q --no-deps "$wheel" >>"$log" 2>&1 || [[ "$(version)" != *.post* ]]; then
    $PY -m pip install -q --no-deps "pillow==${old:-12.3.0}" >/dev/null 2>&1
  fi
fi
if [[ "$(version)" == *.post* ]]; then
  echo "pillow-simd: active ($(version))"
else
  echo "pillow-simd: could not be built here (see $log); keeping Pillow $(version)"
fi
