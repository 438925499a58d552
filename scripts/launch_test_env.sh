#!/usr/bin/env bash
# Run test/test_launch.py (launch_pytest: sim.launch.py with its four nodes as real
# processes) without a ROS installation, on top of the venv that scripts/setup.sh made.
#
#   bash scripts/launch_test_env.sh [LAUNCH LAUNCH_ROS] [--no-run] [-- PYTEST_ARGS...]
#
# LAUNCH and LAUNCH_ROS are ros2/launch and ros2/launch_ros, each a checkout or a
# bare git directory (its $AMI_ROS_LAUNCH_REF is extracted). Without them the script
# clones both from GitHub (needs network). The launch packages are not on PyPI; the
# rolling branch (launch 3.7 / launch_ros 0.28) works with the rclpy 9.x wheels.
#
# What it does, every step safe to repeat:
#   1. a scratch venv that sees the ami_ros venv's packages (one .pth file that also
#      puts the ROS wheels' shared libraries on LD_LIBRARY_PATH, as their own
#      bootstrapper does for the base venv);
#   2. pip install --no-deps of launch, launch_testing, launch_pytest, launch_ros from
#      the sources, plus osrf-pycommon and lark from PyPI (pytest stays the base
#      venv's). launch_ros imports composition_interfaces (no PyPI wheel) for
#      composable nodes only; when it is missing, a stub that raises on use goes into
#      the scratch folder, on the scratch venv's path only;
#   3. ami_ros installed the way colcon builds an ament_python package
#      (setup.py install --single-version-externally-managed into its own prefix:
#      share/ami_ros/{launch,config,models}, lib/ami_ros/<node executables> through
#      setup.cfg's install_scripts), then AMENT_PREFIX_PATH and PYTHONPATH set to it,
#      as `source install/setup.bash` would. The install copies the working tree, so it
#      is redone on every run;
#   4. pytest on test/test_launch.py (skips are reported, and count as a failure).
#
# Environment:
#   AMI_VENV             the ami_ros venv (default: <repo>/.venv)
#   AMI_LAUNCH_SCRATCH   scratch folder for sources, stubs, build and install
#                        (default: ${XDG_CACHE_HOME:-~/.cache}/ami_ros/launch_test)
#   AMI_LAUNCH_VENV      the scratch venv (default: $AMI_LAUNCH_SCRATCH/venv)
#   AMI_ROS_LAUNCH_REF   branch or commit of ros2/launch and ros2/launch_ros (default: rolling)
#   AMI_LAUNCH_REINSTALL set to 1 to reinstall the launch packages
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV=${AMI_VENV:-$REPO/.venv}
SCRATCH=${AMI_LAUNCH_SCRATCH:-${XDG_CACHE_HOME:-$HOME/.cache}/ami_ros/launch_test}
LVENV=${AMI_LAUNCH_VENV:-$SCRATCH/venv}
REF=${AMI_ROS_LAUNCH_REF:-rolling}
RUN=1
srcs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-run) RUN=0 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,35p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "launch_test_env.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    *) [ -d "$1" ] || { echo "launch_test_env.sh: no folder '$1'" >&2; exit 2; }
       srcs+=("$(cd "$1" && pwd)") ;;
  esac
  shift
done
if [ ${#srcs[@]} -ne 0 ] && [ ${#srcs[@]} -ne 2 ]; then
  echo "launch_test_env.sh: give both LAUNCH and LAUNCH_ROS, or neither" >&2
  exit 2
fi

step() { printf '\n== %s\n' "$*"; }

BASE_PY="$VENV/bin/python"
if [ ! -x "$BASE_PY" ]; then
  echo "no venv at $VENV: run 'bash scripts/setup.sh --no-demo' first (or set AMI_VENV)" >&2
  exit 2
fi
# The base venv's interpreter, Python version and site-packages
read -r INTERP PYVER BASE_SITE < <("$BASE_PY" -c \
  'import sys, sysconfig; print(sys._base_executable, "%d.%d" % sys.version_info[:2], sysconfig.get_paths()["purelib"])')
mkdir -p "$SCRATCH/src"

# 0. the sources of ros2/launch and ros2/launch_ros
step "sources ($SCRATCH/src)"
source_dir() {  # NAME GIVEN -> prints the folder that holds the NAME repository's packages
  local name=$1 given=${2:-} dest="$SCRATCH/src/$1"
  if [ -n "$given" ] && [ -f "$given/$name/setup.py" ]; then
    echo "$given"                                         # a checkout
  elif [ -n "$given" ] && git --git-dir="$given" rev-parse -q --verify "$REF^{commit}" >/dev/null 2>&1; then
    rm -rf "$dest" && mkdir -p "$dest"                    # a bare git directory
    git --git-dir="$given" archive "$REF" | tar -x -C "$dest"
    echo "$dest"
  elif [ -n "$given" ]; then
    echo "$given: neither a checkout of ros2/$name nor a git directory with '$REF'" >&2
    return 1
  else                                                    # cloned once, then reused
    [ -f "$dest/$name/setup.py" ] || git clone -q --depth 1 --branch "$REF" "https://github.com/ros2/$name.git" "$dest"
    echo "$dest"
  fi
}
LAUNCH_SRC=$(source_dir launch "${srcs[0]:-}")
LAUNCH_ROS_SRC=$(source_dir launch_ros "${srcs[1]:-}")
echo "launch: $LAUNCH_SRC"
echo "launch_ros: $LAUNCH_ROS_SRC"

# 1. scratch venv on top of the ami_ros venv
step "scratch venv $LVENV (on top of $VENV)"
[ -x "$LVENV/bin/python" ] || "$INTERP" -m venv --without-pip "$LVENV"
PY="$LVENV/bin/python"
LSITE=$("$INTERP" -c 'import sys, sysconfig; print(sysconfig.get_paths(vars={"base": sys.argv[1], "platbase": sys.argv[1]})["purelib"])' "$LVENV")
# The base venv's site dir is added after the scratch venv's own (whose packages win,
# e.g. lark 1.x over lark-parser), with its .pth files: the editable ami_ros and the
# ROS wheels' bootstrapper, which re-executes Python with LD_LIBRARY_PATH set. That
# bootstrapper looks only under sys.prefix (the scratch venv), hence the libraries here.
cat > "$LSITE/_ami_base_venv.py" <<EOF
# Written by ami_ros scripts/launch_test_env.sh: see the packages of $VENV.
import glob, os, site
BASE = '$BASE_SITE'
libs = ['$VENV/lib'] + sorted(glob.glob(os.path.join(BASE, 'ros_*.libs')))
old = [p for p in os.environ.get('LD_LIBRARY_PATH', '').split(os.pathsep) if p]
os.environ['LD_LIBRARY_PATH'] = os.pathsep.join(libs + [p for p in old if p not in libs])
site.addsitedir(BASE)
EOF
echo "import _ami_base_venv" > "$LSITE/_ami_base_venv.pth"
"$PY" -c 'import rclpy, pytest, ami_ros'  # the base venv is seen

# 2. launch packages
step "launch, launch_testing, launch_pytest, launch_ros"
have_launch() {
  "$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as md
for d in ("launch", "launch_testing", "launch_pytest", "launch_ros", "osrf-pycommon", "lark"):
    md.distribution(d)
import launch_pytest, launch_ros.actions  # noqa: F401
EOF
}
if [ "${AMI_LAUNCH_REINSTALL:-0}" = 1 ] || ! have_launch; then
  rm -f "$LSITE/zz_ami_stubs.pth"
  # --no-build-isolation: setuptools comes from the base venv, no download to build
  if ! { "$PY" -m pip install --no-deps --no-build-isolation --force-reinstall \
           "$LAUNCH_SRC/launch" "$LAUNCH_SRC/launch_testing" "$LAUNCH_SRC/launch_pytest" \
           "$LAUNCH_ROS_SRC/launch_ros" &&
         "$PY" -m pip install --no-deps "osrf-pycommon>=2" "lark>=1.1,<2"; } >"$SCRATCH/pip.log" 2>&1; then
    tail -30 "$SCRATCH/pip.log" >&2
    exit 1
  fi
  grep '^Successfully installed' "$SCRATCH/pip.log" || true
fi
if ! "$PY" -c 'import composition_interfaces.srv' 2>/dev/null; then
  echo "composition_interfaces missing: stub in $SCRATCH/stubs (composable nodes unsupported)"
  mkdir -p "$SCRATCH/stubs/composition_interfaces"
  cat > "$SCRATCH/stubs/composition_interfaces/__init__.py" <<'EOF'
"""Stand-in for the ROS interface package composition_interfaces (no PyPI wheel).

launch_ros imports composition_interfaces.srv when it is imported, for
LoadComposableNodes; ami_ros starts no composable nodes. Any use raises."""
EOF
  cat > "$SCRATCH/stubs/composition_interfaces/srv.py" <<'EOF'
class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("composition_interfaces is a stub here: composable nodes are not supported")


class LoadNode:
    Request = _Unavailable
    Response = _Unavailable
EOF
  echo "$SCRATCH/stubs" > "$LSITE/zz_ami_stubs.pth"  # after every real package
fi
"$PY" -c 'import launch, launch_ros.actions, launch_pytest; print("launch", launch.__file__)'

# 3. ami_ros, ament_python style (what colcon build does), into its own prefix
PREFIX="$SCRATCH/install/ami_ros"
BUILD="$SCRATCH/build/ami_ros"
step "ami_ros -> $PREFIX"
rm -rf "$PREFIX" "$BUILD"
mkdir -p "$BUILD"
if ! "$PY" setup.py -q egg_info --egg-base "$BUILD" build --build-base "$BUILD/build" \
      install --prefix "$PREFIX" --record "$BUILD/install.log" \
      --single-version-externally-managed >"$BUILD/setup.log" 2>&1; then
  tail -30 "$BUILD/setup.log" >&2
  exit 1
fi
export AMENT_PREFIX_PATH="$PREFIX:$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PYTHONPATH="$PREFIX/lib/python$PYVER/site-packages${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
from pathlib import Path
from ament_index_python.packages import get_package_prefix, get_package_share_directory
share, prefix = Path(get_package_share_directory("ami_ros")), Path(get_package_prefix("ami_ros"))
for p in ["launch/sim.launch.py", "launch/robot.launch.py", "config/sim.yaml", "models/default/card.yaml"]:
    assert (share / p).is_file(), share / p
for exe in ["sim_node", "encoder_node", "planner_node", "safety_node"]:
    assert (prefix / "lib" / "ami_ros" / exe).is_file(), exe
print("share:", share)
EOF

# 4. the launch test
[ "$RUN" = 1 ] || { echo; echo "installed; --no-run given"; exit 0; }
step "pytest test/test_launch.py test/test_launch_gazebo.py"
export MUJOCO_GL=${MUJOCO_GL:-egl}
args=(-p no:cacheprovider -rs)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  args+=(--timeout="${AMI_TEST_TIMEOUT:-300}")
fi
set +e
"$PY" -m pytest "${args[@]}" test/test_launch.py test/test_launch_gazebo.py "$@" | tee "$BUILD/pytest.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 0 ] && grep -q "skipped" "$BUILD/pytest.log" && ! grep -q " passed" "$BUILD/pytest.log"; then
  echo "launch_test_env.sh: the launch test was skipped, see the reason above" >&2
  rc=1
fi
exit "$rc"
