#!/usr/bin/env bash
# Tollgate's benchmark suite (docs/benchmarks.md): builds release binaries, installs the
# load generator (oha) and the nginx baseline if missing, then runs every scenario on
# 127.0.0.1 and prints one table per scenario plus the targets of issue 6.
#
#   bench/run.sh [--quick] [--postgres postgres://USER@HOST:PORT/DB] [--only chat,capacity,...]
#                [--baseline REV]
#
# --quick      shorter runs (about 3 minutes instead of about 10, after the build)
# --postgres   also run the usage writer and the gateway on PostgreSQL: a fresh database
#              tollgate_bench_<pid> is created on that server and dropped at the end
# --only       a subset: chat,capacity,stream,held,embeddings,keys,routing,providers,tokenizer,
#              budgets,observability-cost,observability,before-after,activity,console,writer,postgres,
#              cluster,cluster-before-after
# --baseline   also build commit REV (once, into target/baseline-REV) and compare it with
#              this build on the same load (the before-after scenarios)
# --keep       keep the scratch folder's databases (logs and results.md are always kept)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=()
PG=()
ONLY=()
KEEP=0
BASELINE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--quick); shift ;;
        --postgres) PG=(--postgres "$2"); shift 2 ;;
        --only) ONLY=(--only "$2"); shift 2 ;;
        --keep) KEEP=1; shift ;;
        --baseline) BASELINE=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "== building release binaries into $TARGET"
CARGO_TARGET_DIR=$TARGET cargo build --release --quiet \
    -p tollgate-server -p fake-upstream -p tollgate-bench

BASE_ARGS=()
if [ -n "$BASELINE" ]; then
    REV=$(git rev-parse --short "$BASELINE^{commit}")
    BASE_TARGET=$TARGET/baseline-$REV
    if [ ! -x "$BASE_TARGET/release/tollgate" ]; then
        echo "== building the baseline $REV into $BASE_TARGET (once)"
        SRC=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-baseline.XXXXXX")
        git archive "$REV" | tar -x -C "$SRC"
        CARGO_TARGET_DIR=$BASE_TARGET cargo build --release --quiet \
            --manifest-path "$SRC/Cargo.toml" -p tollgate-server
        rm -rf "$SRC"
    fi
    BASE_ARGS=(--baseline-bin "$BASE_TARGET/release/tollgate")
fi

OHA_VERSION=1.16.0
if [ -x "$ROOT/bench/.tools/bin/oha" ]; then
    OHA=$ROOT/bench/.tools/bin/oha
elif command -v oha >/dev/null 2>&1; then
    OHA=$(command -v oha)
else
    echo "== installing oha $OHA_VERSION into bench/.tools (once)"
    CARGO_TARGET_DIR=$TARGET/oha-build cargo install oha --version "$OHA_VERSION" --locked \
        --root "$ROOT/bench/.tools" --quiet
    OHA=$ROOT/bench/.tools/bin/oha
fi

NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing nginx (the proxy_pass baseline) from Debian"
    (apt-get install -y -q nginx-light >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }) || true
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
NGINX_ARGS=()
[ -x "$NGINX" ] && NGINX_ARGS=(--nginx "$NGINX")

# 2,000 held streams need about 4,000 descriptors in Tollgate and as many in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
echo "== scratch folder: $WORK"
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
status=0
"$TARGET/release/tollgate-bench" run \
    --bin-dir "$TARGET/release" --oha "$OHA" "${NGINX_ARGS[@]}" \
    --work-dir "$WORK" --results "$WORK/results.md" \
    "${QUICK[@]}" "${PG[@]}" "${ONLY[@]}" "${BASE_ARGS[@]}" || status=$?
if [ "$KEEP" = 0 ]; then
    rm -rf "$WORK"/sqlite-data "$WORK"/baseline-data "$WORK"/writer-bench.db* "$WORK"/pg-data
fi
exit "$status"
