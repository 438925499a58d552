#!/usr/bin/env bash
# Install everything ami_ros needs into a virtual environment, then run the demo.
#
#   bash scripts/setup.sh             # install, then `ami-ros demo`
#   bash scripts/setup.sh --no-demo   # install only (what CI runs)
#
# Steps: Debian packages for headless MuJoCo rendering (EGL; skipped when present),
# a venv, the CPU build of torch, then this package with its ROS 2 wheels and test
# tools (pip install -e ".[ros,test]").
# Environment:
#   AMI_VENV         venv folder (default: <repo>/.venv)
#   PYTHON           interpreter that creates the venv (default: python3, >= 3.10)
#   AMI_TORCH_INDEX  pip index for torch, e.g. https://download.pytorch.org/whl/cpu
#                    where the default index would give a CUDA build (default: pip's own)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV=${AMI_VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
RUN_DEMO=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) RUN_DEMO=0 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

# 1. system libraries (offscreen OpenGL through EGL; venv support)
step "system packages"
apt_pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_pkgs+=(python3-venv)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "present: ${apt_pkgs[*]}"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "warning: no apt-get; install EGL/Mesa (${missing[*]}) yourself for offscreen rendering" >&2
fi

# 2. virtual environment
step "virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed, have %s" % sys.version'
# pip >= 25.3 builds the editable install through PEP 660; older pips fall back to
# `setup.py develop`, which setup.cfg's ament [develop] section breaks.
"$PY" -m pip install --upgrade "pip>=25.3"

# 3. torch first, so resolving the package below does not pull a CUDA build
step "torch==$TORCH_VERSION"
"$PY" -m pip install ${AMI_TORCH_INDEX:+--index-url "$AMI_TORCH_INDEX"} "torch==$TORCH_VERSION"

# 4. the package, ROS 2 wheels and test tools
step "ami_ros with [ros,test]"
"$PY" -m pip install -e "$REPO[ros,test]"
"$PY" -c 'import torch, rclpy, mujoco; print("torch", torch.__version__, "(CUDA %s)" % torch.version.cuda if torch.version.cuda else "(CPU)", "| mujoco", mujoco.__version__, "| rclpy ok")'

echo
echo "installed into $VENV (activate: . $VENV/bin/activate)"

# 5. the main job
if [ "$RUN_DEMO" -eq 1 ]; then
  step "ami-ros demo"
  export MUJOCO_GL=${MUJOCO_GL:-egl}
  exec "$VENV/bin/ami-ros" demo
fi
