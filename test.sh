#!/usr/bin/env bash
# Runs every test: the Rust suites (SQLite, and PostgreSQL/Redis where they run), the
# client tests with the official Python and Node SDKs against the real binary, and the
# real coding agents (Claude Code, Codex), pinned and installed from npm, through it.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --all-targets
cargo test
tests/python/run.sh
tests/node/run.sh
tests/browser/run.sh
tests/agents/run.sh
