#!/usr/bin/env bash
# Run the test suite in the venv that scripts/setup.sh made. Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -k safety -x`.
#   AMI_VENV          venv folder (default: <repo>/.venv)
#   AMI_TEST_TIMEOUT  seconds per test when pytest-timeout is installed (default 300)
# pytest's exit status is passed through (5 = no tests collected is a failure).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${AMI_VENV:-$(pwd)/.venv}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "no venv at $VENV: run 'bash scripts/setup.sh' first" >&2
  exit 2
fi
export MUJOCO_GL=${MUJOCO_GL:-egl}

args=(-p no:cacheprovider)
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
  args+=(--timeout="${AMI_TEST_TIMEOUT:-300}")
fi
exec "$PY" -m pytest "${args[@]}" "$@"
