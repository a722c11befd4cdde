#!/usr/bin/env bash
# Runs the Python client-compatibility tests (official openai / anthropic SDKs) against
# the real tollgate and fake-upstream binaries. Build them first:
#   cargo build -p tollgate-server -p fake-upstream
# Binaries: $TOLLGATE_BIN / $FAKE_UPSTREAM_BIN, else $CARGO_TARGET_DIR/debug/ (when set and
# built there), else <repo>/target/debug/.
# Usage: tests/python/run.sh [pytest args...]   e.g. tests/python/run.sh -k anthropic -x
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# Reinstall only when requirements.txt changed since the last install.
stamp="$venv/.tollgate-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi

if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    if [ -z "${TOLLGATE_BIN:-}" ] && [ -x "$CARGO_TARGET_DIR/debug/tollgate" ]; then
        export TOLLGATE_BIN="$CARGO_TARGET_DIR/debug/tollgate"
    fi
    if [ -z "${FAKE_UPSTREAM_BIN:-}" ] && [ -x "$CARGO_TARGET_DIR/debug/fake-upstream" ]; then
        export FAKE_UPSTREAM_BIN="$CARGO_TARGET_DIR/debug/fake-upstream"
    fi
fi

cd "$repo"
set +e
"$venv/bin/python" -m pytest -q tests/python "$@"
status=$?
exit $status
