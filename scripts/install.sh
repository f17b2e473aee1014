#!/usr/bin/env bash
# Creates .venv/ with the pinned dependency set, installs mmcurate into it
# (editable) and, as the very last step, swaps Pillow for pillow-simd.
# Idempotent: a second run with unchanged inputs does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.mmcurate-installed
want=$(cat requirements.lock requirements-simd.txt pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

# System libraries for building pillow-simd (JPEG, zlib, WebP, TIFF); Chromium, in which
# the tests render the curation report (headless); ffmpeg (audio libsndfile cannot read),
# espeak-ng and sox (real test speech), Chromaprint's fpcalc (audio fingerprints).
need_apt=()
for p in libjpeg-dev zlib1g-dev libwebp-dev libtiff-dev chromium ffmpeg espeak-ng libchromaprint-tools sox; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "[install] WARNING: missing system packages ${need_apt[*]}; as root run:"
    echo "          apt-get install ${need_apt[*]}   (pillow-simd may not build without them; the report test needs chromium)"
  fi
fi

[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
LOG=$VENV/install.log
: > "$LOG"
# pip's chatter goes to the log; a failing step prints the log's end and stops.
step() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[install] FAILED: $*"; tail -n 30 "$LOG"; exit 1
  fi
}
step $VENV/bin/python -m pip install -q --upgrade pip
echo "[install] pinned dependencies (requirements.lock) into $VENV/"
step $VENV/bin/pip install -q -r requirements.lock
# PySceneDetect (shot boundaries) declares the GUI build of OpenCV, which needs libGL; the
# headless build in requirements.lock is the same cv2 without it, so its own deps are skipped.
step $VENV/bin/pip install -q --no-deps scenedetect==0.7.2
step $VENV/bin/pip install -q --no-deps -e .

# pillow-simd last: anything installed after it that requires pillow would
# put Pillow back. Build with AVX2 only where the CPU has it.
simd_version=$(grep -i '^pillow-simd==' requirements-simd.txt | cut -d= -f3)
flavour=pillow
has() { $VENV/bin/python -c "import importlib.metadata as m; m.distribution('$1')" 2>/dev/null; }
# Rebuild when pillow-simd is missing, or when a dependency put Pillow back over it.
if ! has pillow-simd || has pillow; then
  cc_flags=cc
  grep -qw avx2 /proc/cpuinfo && cc_flags="cc -mavx2"
  echo "[install] building pillow-simd $simd_version with CC='$cc_flags' (about 30-50 s)"
  $VENV/bin/pip uninstall -q -y pillow pillow-simd >>"$LOG" 2>&1 || true
  CC="$cc_flags" $VENV/bin/pip install -q --no-deps --no-cache-dir "pillow-simd==$simd_version" >>"$LOG" 2>&1 || true
  if $VENV/bin/python -c "import importlib.metadata as m; m.distribution('pillow-simd'); import PIL.Image" 2>/dev/null; then
    flavour=pillow-simd
  else
    echo "[install] WARNING: pillow-simd failed to build; falling back to Pillow (resizes will be 5-10x slower)"
    $VENV/bin/pip uninstall -q -y pillow-simd 2>/dev/null || true
    step $VENV/bin/pip install -q "$(grep -i '^pillow==' requirements-simd.txt)"
  fi
else
  flavour=pillow-simd
fi
# Which PIL the install ended with; tests/test_install.py checks that it is the one loaded.
echo "$flavour" > $VENV/.mmcurate-pil
echo "[install] PIL flavour: $flavour"
echo "$want" > "$STAMP"
