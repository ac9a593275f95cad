#!/usr/bin/env bash
# Installs the project and its tools into the current Python environment (use a venv if you like).
# Every dependency at the version in requirements/constraints.txt. torch: an existing install is
# kept (with a warning if its version differs); otherwise the locked version is installed (on the
# project's CI machines that is a local CPU wheel; elsewhere pip picks the build for your platform).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# ffmpeg: yt-dlp cuts and extracts MusicCaps clips with it, the folder source converts with it
if ! command -v ffmpeg >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg
fi
# Exact versions of every dependency (README, Reproducibility): requirements/constraints.txt.
# torch: its version is locked, its build is the platform's; TORCH_INDEX_URL picks one, e.g.
# https://download.pytorch.org/whl/cpu or https://download.pytorch.org/whl/cu126.
CONSTRAINTS=requirements/constraints.txt
TORCH=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==$TORCH" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
HAVE=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
if [ "$HAVE" != "$TORCH" ]; then  # keep the user's torch, say what that costs
  echo "install.sh: keeping torch $HAVE (the lock has $TORCH): metrics may move beyond the" \
    "README's tolerance" >&2
  grep -v '^torch==' "$CONSTRAINTS" >"${TMPDIR:-/tmp}/musicgen-constraints.txt"
  CONSTRAINTS="${TMPDIR:-/tmp}/musicgen-constraints.txt"
fi
"$PY" -m pip install --quiet -c "$CONSTRAINTS" -e ".[dev]"
# PaSST parity tests (tests/metrics/test_passt.py): hear21passt's own modules, without the
# torchaudio and timm it asks for (the CPU torch here cannot import PyPI's torchaudio; the tests
# stand in for the two import-time pieces they touch, see tests/metrics/hear21passt_shim.py)
"$PY" -m pip install --quiet --no-deps "hear21passt==0.0.26"
# git identity for `dvc exp run` (it commits experiments) on machines that have none
git config user.email >/dev/null || git config user.email "musicgen-dvc@localhost"
git config user.name >/dev/null || git config user.name "musicgen-dvc"
