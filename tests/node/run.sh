#!/usr/bin/env bash
# Runs the Node client tests (official `openai` and `@anthropic-ai/sdk` packages) on the
# pinned Node 22 against the real tollgate and fake-upstream binaries (build them first:
# cargo build -p tollgate-server -p fake-upstream; see harness.mjs for $TOLLGATE_BIN).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
cd "$here"
exec node_modules/.bin/node --test --test-reporter=spec "$@" sdk.test.mjs
