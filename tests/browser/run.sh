#!/usr/bin/env bash
# Runs the console's end-to-end tests in a real browser: Debian's Chromium (installed with
# apt-get when /usr/bin/chromium is missing) driven headless by playwright-core, with
# axe-core's accessibility checks, against the real tollgate and fake-upstream binaries
# (built here if missing). Screenshots of every page land in tests/browser/screenshots/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_BIN:-}" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi
stamp="node_modules/.tollgate-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -d node_modules/playwright-core ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
fi
target="${CARGO_TARGET_DIR:-$here/../../target}"
if [ -z "${TOLLGATE_BIN:-}" ] && { [ ! -x "$target/debug/tollgate" ] || [ ! -x "$target/debug/fake-upstream" ]; }; then
    (cd "$here/../.." && cargo build -p tollgate-server -p fake-upstream)
fi
exec node --test --test-reporter=spec "$@" console.test.mjs
