#!/usr/bin/env bash
# Runs every test: the Rust suites (SQLite, and PostgreSQL/Redis where they run) and the
# Python client tests with the official openai and anthropic SDKs against the real binary.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --all-targets
cargo test
tests/python/run.sh
