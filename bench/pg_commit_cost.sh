#!/bin/bash
# PostgreSQL's CPU per call of the usage function (one record per call), as a replica's
# writer calls it, measured from the server's processes (docs/cluster.md, "Capacity
# planning"). Needs pgbench and a tollgate binary; uses a scratch database.
#
#   bench/pg_commit_cost.sh [target/release/tollgate] [postgres://postgres@127.0.0.1:5432]
set -euo pipefail
bin=${1:-target/release/tollgate}
server=${2:-postgres://postgres@127.0.0.1:5432}
db=tollgate_commit_cost
psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
"$bin" --database-url "$server/$db" migrate > /dev/null
for a in 1 2 3 4; do "$bin" --database-url "$server/$db" accounts create "acme$a" > /dev/null; done
# Key n belongs to account n.
psql "$server/$db" -qc "INSERT INTO api_keys (account_id, kind, name, key_hash, hint, created_at, updated_at) SELECT id, 'inference', 'k', 'h' || id, 'x', 0, 0 FROM accounts ORDER BY id"
call=$(mktemp)
own=$(mktemp)
trap 'rm -f "$call" "$own"' EXIT
# One record of account 1 and its key (the function's arguments as the writer passes them,
# migration 0014: no budget slice); `$own`: of the account and key numbered after the
# pgbench client (clients 0-3: accounts 1-4), so that no two connections share a row.
cat > "$call" <<'SQL'
\set r random(1, 2000000000)
SELECT tollgate_record_usage(ARRAY['q' || :r || '-' || :client_id], ARRAY[1::bigint], ARRAY[1::bigint], ARRAY['gpt'], ARRAY['chat'], ARRAY[10::bigint], ARRAY[0::bigint], ARRAY[20::bigint], ARRAY[1000::bigint], ARRAY[200::bigint], ARRAY[5::bigint], ARRAY[1764600000000::bigint], ARRAY['gpt'], ARRAY['openai'], ARRAY[1::bigint], ARRAY[false], ARRAY[0::bigint], ARRAY['2026-12-01'], ARRAY[NULL::text]);
SQL
sed 's/ARRAY\[1::bigint\], ARRAY\[1::bigint\]/ARRAY[(:client_id + 1)::bigint], ARRAY[(:client_id + 1)::bigint]/' "$call" > "$own"
# CPU (clock ticks) of every process of the postgres user.
ticks() {
  local t=0
  for p in $(pgrep -u postgres); do
    for v in $(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null); do t=$((t + v)); done
  done
  echo "$t"
}
run() { # clients, PGOPTIONS, script, what
  local out
  out=$(mktemp)
  PGOPTIONS="$2" pgbench "$server/$db" -n -c "$1" -j 1 -T 10 -f "$3" > "$out" 2>&1 &
  sleep 2
  local c0 t0 c1 t1
  c0=$(ticks); t0=$(date +%s%N)
  sleep 6
  c1=$(ticks); t1=$(date +%s%N)
  wait
  local tps calls
  tps=$(awk '/^tps/ {print int($3)}' "$out")
  calls=$((tps * (t1 - t0) / 1000000000))
  echo "$4, ${2:-synchronous commit}: $tps calls/s, $(( (c1 - c0) * 1000000 / $(getconf CLK_TCK) / calls )) µs of PostgreSQL CPU per call, $(grep 'latency average' "$out")"
  rm -f "$out"
}
run 1 "" "$call" "1 connection"
run 1 "-c synchronous_commit=off" "$call" "1 connection"
run 4 "" "$call" "4 connections, one account"
run 4 "" "$own" "4 connections, an account each"
psql "$server/postgres" -qc "DROP DATABASE $db"
