#!/usr/bin/env bash
# Runs the real coding agents, pinned in tests/node/package.json, non-interactively against
# the gateway and the fake upstream: Claude Code (`claude -p`) and Codex (`codex exec`),
# each with a tool round trip, each metered exactly. No network but the npm registry
# (for the install). Build the binaries first: cargo build -p tollgate-server -p fake-upstream.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../node/install.sh"
cd "$here"
exec ../node/node_modules/.bin/node --test --test-reporter=spec "$@" agents.test.mjs
