#!/usr/bin/env bash
# Installs the project and its tools into the current Python environment (use a venv if you like).
# torch: an existing install is kept; otherwise torch 2.13.0 is installed (on the project's CI
# machines that is a local CPU wheel; elsewhere pip picks the build for your platform).
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
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[dev]"
# git identity for `dvc exp run` (it commits experiments) on machines that have none
git config user.email >/dev/null || git config user.email "musicgen-dvc@localhost"
git config user.name >/dev/null || git config user.name "musicgen-dvc"
