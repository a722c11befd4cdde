#!/usr/bin/env bash
# The request log (GET /v1/account/requests) over a large ledger: seeds ROWS usage rows
# (default 10 million) over 30 days and 10 keys into a fresh SQLite database, starts the
# release `tollgate` on it, and times pages one at a time with oha: the first page, each
# filter of the API (key, model, status, date range) and a page 50 pages deep in the
# cursor chain. Issue 18's target: a page at p99 under 50 ms over 10 million rows.
#
#   bench/request-log.sh [ROWS]        (after bench/run.sh has built the release binaries and oha)
#   REUSE=DIR bench/request-log.sh     times the pages again on the database a run kept in DIR
#
# Seeding 10 million rows takes about 11 minutes here; the database (about 2 GB) is kept
# and its folder printed, so the pages can be timed again once the machine is quiet (the
# first seconds after seeding, while the kernel writes the file out, are not).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-10000000}
BIN=$ROOT/target/release
OHA=$ROOT/bench/.tools/bin/oha
PORT=$((20000 + RANDOM % 10000))
URL="http://127.0.0.1:$PORT"
if [ -n "${REUSE:-}" ]; then
    WORK=$REUSE
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-request-log.XXXXXX")
fi
cat > "$WORK/tollgate.toml" <<TOML
listen = "127.0.0.1:$PORT"
database_url = "sqlite://$WORK/tollgate.db"
data_dir = "$WORK"
[catalog]
builtin = false
TOML
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true' EXIT
if [ -z "${REUSE:-}" ]; then
    "$BIN/tollgate" serve --config "$WORK/tollgate.toml" > "$WORK/tollgate.log" 2>&1 &
    PID=$!
    for _ in $(seq 50); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
    PROV=$(cat "$WORK/provisioning-key.txt")
    for i in $(seq 10); do
        curl -sf -X POST "$URL/v1/account/keys" -H "authorization: Bearer $PROV" \
            -H 'content-type: application/json' -d "{\"name\":\"k$i\"}" >/dev/null
    done
    kill $PID; wait $PID 2>/dev/null || true
    echo "== seeding $ROWS usage rows into $WORK (kept: REUSE=$WORK times the pages again)"
    time "$BIN/tollgate-bench" seed-activity --database-url "sqlite://$WORK/tollgate.db" --rows "$ROWS"
fi
PROV=$(cat "$WORK/provisioning-key.txt")
"$BIN/tollgate" serve --config "$WORK/tollgate.toml" > "$WORK/tollgate.log" 2>&1 &
PID=$!
for _ in $(seq 1200); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
KEY_ID=$(curl -sf "$URL/v1/account/keys" -H "authorization: Bearer $PROV" | python3 -c 'import sys,json;print(json.load(sys.stdin)["data"][3]["id"])' 2>/dev/null ||
    curl -sf "$URL/v1/account/keys" -H "authorization: Bearer $PROV" | python3 -c 'import sys,json;d=json.load(sys.stdin);print((d.get("keys") or d.get("data"))[3]["id"])')
FROM=$(date -u -d '20 days ago' +%Y-%m-%dT00:00:00Z)
TO=$(date -u -d '19 days ago' +%Y-%m-%dT00:00:00Z)
# A cursor 50 pages deep.
CURSOR=""
for _ in $(seq 50); do
    CURSOR=$(curl -sf "$URL/v1/account/requests?limit=100${CURSOR:+&cursor=$CURSOR}" -H "authorization: Bearer $PROV" |
        python3 -c 'import sys,json;print(json.load(sys.stdin).get("next_cursor") or "")')
done
printf '\n| page | p50 (ms) | p99 (ms) |\n|---|---:|---:|\n'
for q in "" "key_id=$KEY_ID" "model=text-embedding-3-small" "status=error" \
    "from=$FROM&to=$TO" "key_id=$KEY_ID&model=gpt-4o-mini&from=$FROM&to=$TO" \
    "cursor=$CURSOR"; do
    out=$("$OHA" -n 200 -c 1 --no-tui -H "authorization: Bearer $PROV" "$URL/v1/account/requests?limit=100&$q")
    # oha prints each percentile with its own unit (secs, ms, µs).
    ms='{ v = $3; u = $4; if (u ~ /^sec/) v *= 1000; else if (u ~ /^(µs|us)/) v /= 1000; printf "%.2f", v }'
    p50=$(echo "$out" | awk "/50.00% in/ $ms")
    p99=$(echo "$out" | awk "/99.00% in/ $ms")
    codes=$(echo "$out" | grep -oE '\[[0-9]+\] [0-9]+' | tr '\n' ' ')
    echo "| \`?limit=100&$q\` ($codes) | $p50 | $p99 |"
done
echo "(the database is in $WORK)"
