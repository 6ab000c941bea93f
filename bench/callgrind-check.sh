#!/usr/bin/env bash
# A regression figure that stays put on a noisy machine: instructions the gateway executes per
# proxied 2 KB FindItem request, counted by callgrind.
#
#   bash bench/callgrind-check.sh            # build, measure, fail above the threshold
#   bash bench/callgrind-check.sh --measure  # only print the figure
#   bash bench/callgrind-check.sh --nginx    # print it, and nginx's for the same requests
#
# The gateway (release build) runs under callgrind with the fixed-response upstream and the
# simulator's token endpoint; after a warm-up (credential cached, token fetched, connections
# pooled) the counters are zeroed, N requests are sent one after another on one keep-alive
# connection, and the counters dumped: the figure is that dump's total divided by N.
set -euo pipefail
cd "$(dirname "$0")/.."

# Measured 2026-12-01 on the development machine (release build, valgrind 3.19, runs within
# 1 % of each other); the threshold is ~23 % above it. Raise it only together with a measured
# reason in the commit message. History: 154,200 before the audit record, metrics, request
# span, per-principal rate, per-mailbox slots and connection tracking were added; 186,700 after;
# 230,700 on 2026-12-02 after issue 12's XML 1.0 well-formedness rules in the head scan
# (PrefixScanner::push went from ~48,000 to ~77,000 per request), the canonical framing check,
# the body-read deadline and the backend seam. That regression is issue 17's to win back.
# Valgrind hides SHA-NI, so the HMAC of the credential cache costs more here than natively.
MEASURED=230700
THRESHOLD=260000
N=${CALLGRIND_N:-200}
WARM=20

if ! command -v valgrind >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

cargo build --release --bins --quiet
BIN=target/release/ews-gateway
TOOL=target/release/ews-gateway-bench
OUT=bench/out/callgrind
rm -rf "$OUT"
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_line() {
  for _ in $(seq 1200); do
    if grep -qE "$2" "$1" 2>/dev/null; then grep -m1 -E "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  return 1
}

"$TOOL" upstream >"$OUT/upstream.out" 2>&1 &
PIDS+=($!)
UP=$(wait_line "$OUT/upstream.out" '^addr=' | cut -d= -f2)
"$BIN" sim --listen 127.0.0.1:0 --json >"$OUT/sim.out" 2>"$OUT/sim.err" &
PIDS+=($!)
wait_line "$OUT/sim.out" '^\{' >/dev/null
sim() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$OUT/sim.out" "$1"; }

USER_NAME=alice@contoso.example
PASSWORD=bench-pass
printf '[[user]]\nname = "%s"\npassword_hash = "%s"\n' "$USER_NAME" \
  "$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)" >"$OUT/users.toml"
cat >"$OUT/gateway.toml" <<EOF
[listen]
address = "127.0.0.1:0"
[auth]
users_file = "$PWD/$OUT/users.toml"
cache_ttl_seconds = 3600
# One principal and one mailbox carry the whole load here: the production caps on both would
# (rightly) throttle it, and the benchmark measures the proxy's cost, not the policy.
[limits]
requests_per_second_per_principal = 0
max_concurrent_requests_per_mailbox = 0
[upstream]
ews_url = "http://$UP/EWS/Exchange.asmx"
response_timeout_seconds = 120
[[tenant]]
tenant_id = "contoso.example"
client_id = "$(sim client_id)"
client_secret_env = "BENCH_CLIENT_SECRET"
authority = "$(sim base_url)"
EOF

BENCH_CLIENT_SECRET="$(sim client_secret)" valgrind --tool=callgrind \
  --callgrind-out-file="$PWD/$OUT/callgrind.out.%p" \
  "$BIN" serve --config "$OUT/gateway.toml" >"$OUT/gateway.out" 2>"$OUT/gateway.err" &
GW_PID=$!
PIDS+=("$GW_PID")
GW=$(wait_line "$OUT/gateway.err" 'addr=' | sed 's/.*addr=\([^ ]*\).*/\1/')

send() { "$TOOL" send --addr "$GW" --n "$1" --user "$USER_NAME" --password "$PASSWORD" --body-file bench/finditem.xml; }
send "$WARM"
callgrind_control -z "$GW_PID" >/dev/null 2>&1
send "$N"
callgrind_control -d "$GW_PID" >/dev/null 2>&1
DUMP=$(ls "$OUT"/callgrind.out."$GW_PID".* 2>/dev/null | head -1)
[[ -n "$DUMP" ]] || { echo "callgrind wrote no dump" >&2; exit 1; }
TOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$DUMP")
PER=$((TOTAL / N))
echo "callgrind: $PER instructions per proxied 2 KB request ($TOTAL over $N; measured figure $MEASURED, threshold $THRESHOLD)"
if [[ "${1:-}" == "--nginx" ]]; then
  # The same requests through nginx, for comparison (not a check). The token is a stand-in of
  # the simulator's token length.
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$OUT/nginx-tmp"
  sed -e "s|@OUT@|$PWD/$OUT|g" -e "s|@PORT@|$PORT|" -e "s|@UP@|$UP|" \
    -e "s|@TOKEN@|$(head -c 1400 /dev/zero | tr '\0' x)|" -e "s|@ANCHOR@|$USER_NAME|" \
    bench/callgrind-nginx.conf >"$OUT/nginx.conf"
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  valgrind --tool=callgrind --callgrind-out-file="$PWD/$OUT/nginx-callgrind.out.%p" \
    "$NGINX" -c "$PWD/$OUT/nginx.conf" -e "$PWD/$OUT/nginx-error.log" >"$OUT/nginx.out" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
  GW=127.0.0.1:$PORT
  send "$WARM"
  callgrind_control -z "$NGINX_PID" >/dev/null 2>&1
  send "$N"
  callgrind_control -d "$NGINX_PID" >/dev/null 2>&1
  NDUMP=$(ls "$OUT"/nginx-callgrind.out."$NGINX_PID".* 2>/dev/null | head -1)
  NTOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$NDUMP")
  echo "callgrind: nginx $((NTOTAL / N)) instructions per proxied 2 KB request ($NTOTAL over $N)"
fi
if [[ "${1:-}" == "--measure" || "${1:-}" == "--nginx" ]]; then exit 0; fi
if ((PER > THRESHOLD)); then
  echo "FAIL: $PER instructions per request is above the threshold $THRESHOLD" >&2
  echo "(profile: callgrind_annotate $DUMP)" >&2
  exit 1
fi
echo "ok: within the threshold"
