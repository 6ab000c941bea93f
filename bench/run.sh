#!/usr/bin/env bash
# The benchmark: client -> upstream directly, client -> nginx -> upstream, and
# client -> ews-gateway -> upstream, measured in the same run in interleaved rounds, on loopback.
#
#   bash bench/run.sh           # full run (about 5 minutes plus the release build)
#   bash bench/run.sh --quick   # one short round of each load (about a minute)
#
# Writes bench/results/latest.md (and prints it); raw figures go to bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if ((QUICK)); then
  ROUNDS=1 DUR=2 CONCS="1 32" BIG_DUR=3 BIG_CONC=2 IDLE=1000 COLD=3
else
  ROUNDS=3 DUR=5 CONCS="1 16 64" BIG_DUR=5 BIG_CONC=4 IDLE=10000 COLD=10
fi
IDLE=${BENCH_IDLE:-$IDLE}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "== installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# Two sockets per proxied idle connection (client side and upstream side) in one process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
MAX_IDLE=$(((FD_LIMIT - 200) / 2))
if ((IDLE > MAX_IDLE)); then
  echo "note: open-file limit $FD_LIMIT allows $MAX_IDLE proxied idle connections, not $IDLE"
  IDLE=$MAX_IDLE
fi

echo "== release build"
cargo build --release --bins --quiet
BIN=target/release/ews-gateway
TOOL=target/release/ews-gateway-bench

OUT=bench/out
rm -rf "$OUT"
mkdir -p "$OUT/nginx-tmp" bench/results
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits for a line matching $2 in file $1 and prints it.
wait_line() {
  for _ in $(seq 300); do
    if grep -qE "$2" "$1" 2>/dev/null; then grep -m1 -E "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
record() { echo "$1" >>"$RESULTS"; }

echo "== starting upstream, simulator (token endpoint), gateway, nginx"
"$TOOL" upstream >"$OUT/upstream.out" 2>"$OUT/upstream.err" &
PIDS+=($!)
UP=$(wait_line "$OUT/upstream.out" '^addr=' | cut -d= -f2)

"$BIN" sim --listen 127.0.0.1:0 --json >"$OUT/sim.out" 2>"$OUT/sim.err" &
PIDS+=($!)
wait_line "$OUT/sim.out" '^\{' >/dev/null
sim() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$OUT/sim.out" "$1"; }
SIM_BASE=$(sim base_url)
SIM_TOKEN_URL=$(sim token_url)
CLIENT_ID=$(sim client_id)
CLIENT_SECRET=$(sim client_secret)

USER_NAME=alice@contoso.example
PASSWORD=bench-pass
AUTH=$(printf '%s:%s' "$USER_NAME" "$PASSWORD" | base64 -w0)
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)
{
  printf '[[user]]\nname = "%s"\npassword_hash = "%s"\n' "$USER_NAME" "$HASH"
  for i in $(seq "$COLD"); do
    printf '[[user]]\nname = "cold-%d@contoso.example"\npassword_hash = "%s"\n' "$i" "$HASH"
  done
} >"$OUT/users.toml"
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
[[tenant]]
tenant_id = "contoso.example"
client_id = "$CLIENT_ID"
client_secret_env = "BENCH_CLIENT_SECRET"
authority = "$SIM_BASE"
EOF

# nginx gets the same kind of token, fetched once here; the log is cleared afterwards so that
# only the gateway's token calls are counted.
TOKEN=$(curl -sS "$SIM_TOKEN_URL" -d grant_type=client_credentials -d "client_id=$CLIENT_ID" \
  --data-urlencode "client_secret=$CLIENT_SECRET" \
  --data-urlencode scope=https://outlook.office365.com/.default |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -sS -X DELETE "$SIM_BASE/_sim/requests" >/dev/null

BENCH_CLIENT_SECRET="$CLIENT_SECRET" "$BIN" serve --config "$OUT/gateway.toml" \
  >"$OUT/gateway.out" 2>"$OUT/gateway.err" &
GW_PID=$!
PIDS+=("$GW_PID")
GW=$(wait_line "$OUT/gateway.err" 'addr=' | sed 's/.*addr=\([^ ]*\).*/\1/')

NGINX_PORT=$(free_port)
cat >"$OUT/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx-error.log warn;
worker_rlimit_nofile $FD_LIMIT;
events { worker_connections $FD_LIMIT; }
http {
  # The gateway writes an audit line per request; nginx its access log.
  access_log $PWD/$OUT/nginx-access.log;
  client_body_temp_path $PWD/$OUT/nginx-tmp/body;
  proxy_temp_path $PWD/$OUT/nginx-tmp/proxy;
  fastcgi_temp_path $PWD/$OUT/nginx-tmp/fastcgi;
  uwsgi_temp_path $PWD/$OUT/nginx-tmp/uwsgi;
  scgi_temp_path $PWD/$OUT/nginx-tmp/scgi;
  client_max_body_size 200m;
  keepalive_requests 1000000;
  keepalive_timeout 3600s;
  upstream ews {
    server $UP;
    keepalive 512;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport;
    location /EWS/ {
      proxy_pass http://ews;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_set_header X-AnchorMailbox "$USER_NAME";
    }
  }
}
EOF
"$NGINX" -c "$PWD/$OUT/nginx.conf" -e "$PWD/$OUT/nginx-error.log" >"$OUT/nginx.out" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break; sleep 0.1; done

declare -A URL=(
  [direct]="http://$UP/EWS/Exchange.asmx"
  [nginx]="http://127.0.0.1:$NGINX_PORT/EWS/Exchange.asmx"
  [gateway]="http://$GW/EWS/Exchange.asmx"
)
PATHS="direct nginx gateway"

# Check each path answers 200 (this also caches the gateway's credential and token).
for p in $PATHS; do
  code=$(curl -sS -o "$OUT/check-$p.xml" -w '%{http_code}' -u "$USER_NAME:$PASSWORD" \
    -H 'Content-Type: text/xml; charset=utf-8' --data-binary @bench/finditem.xml "${URL[$p]}")
  if [[ "$code" != 200 ]]; then
    echo "path $p answered $code:" >&2
    cat "$OUT/check-$p.xml" >&2
    exit 1
  fi
done

python3 - "$OUT/body-10m.xml" 10 "$OUT/body-100m.xml" 100 <<'EOF'
import sys
head = (b'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        b'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header>'
        b'<t:RequestServerVersion Version="Exchange2016"/></s:Header><s:Body><m:CreateAttachment>'
        b'<m:ParentItemId Id="AAMkADk0bench0001AAA="/><m:Attachments><t:FileAttachment><t:Name>scan.pdf</t:Name><t:Content>')
tail = b'</t:Content></t:FileAttachment></m:Attachments></m:CreateAttachment></s:Body></s:Envelope>'
chunk = b'QUJD' * (256 * 1024)  # 1 MiB of base64
for path, mib in zip(sys.argv[1::2], sys.argv[2::2]):
    with open(path, 'wb') as f:
        f.write(head)
        for _ in range(int(mib)):
            f.write(chunk)
        f.write(tail)
EOF

# run_wrk PATH LOAD CONC DURATION BODY ROUND
run_wrk() {
  local threads=$(($3 < 2 ? $3 : 2))
  local line
  line=$(BENCH_BODY="$5" BENCH_AUTH="$AUTH" wrk -t"$threads" -c"$3" -d"$4s" --timeout 30s \
    -s bench/wrk-post.lua "${URL[$1]}" | tail -1)
  record "{\"path\":\"$1\",\"load\":\"$2\",\"conc\":$3,\"round\":$6,${line#\{}"
  echo "   $2 c=$3 round $6 $1: $line"
}

echo "== warm-up"
for p in $PATHS; do run_wrk "$p" warmup 16 1 bench/finditem.xml 0 >/dev/null; done

echo "== 2 KB FindItem, $ROUNDS round(s) of ${DUR}s per path and concurrency ($CONCS)"
for r in $(seq "$ROUNDS"); do
  for c in $CONCS; do
    for p in $PATHS; do run_wrk "$p" 2k "$c" "$DUR" bench/finditem.xml "$r"; done
  done
done

echo "== 10 MiB bodies, $ROUNDS round(s) of ${BIG_DUR}s per path, concurrency $BIG_CONC"
for r in $(seq "$ROUNDS"); do
  for p in $PATHS; do run_wrk "$p" 10m "$BIG_CONC" "$BIG_DUR" "$OUT/body-10m.xml" "$r"; done
done

echo "== one 100 MiB upload through the gateway: peak memory growth"
# Reset the peak (VmHWM) to the current RSS, then stream the upload.
echo 5 >"/proc/$GW_PID/clear_refs"
before=$(kib "$GW_PID" VmRSS)
up=$(curl -sS -o /dev/null -w '%{http_code} %{size_upload} %{time_total}' -u "$USER_NAME:$PASSWORD" -X POST \
  -H 'Content-Type: text/xml; charset=utf-8' -T "$OUT/body-100m.xml" "${URL[gateway]}")
peak=$(kib "$GW_PID" VmHWM)
read -r up_status up_bytes up_seconds <<<"$up"
record "{\"kind\":\"upload\",\"status\":$up_status,\"bytes\":$up_bytes,\"seconds\":$up_seconds,\"rss_before_kib\":$before,\"hwm_kib\":$peak}"
echo "   status $up_status, $up_bytes bytes in $up_seconds s, RSS before $before KiB, peak $peak KiB"

# idle_conns NAME ADDR PIDS...: memory of PIDS (summed VmRSS) before and with $IDLE held connections.
idle_conns() {
  local name=$1 addr=$2
  shift 2
  local before=0 after=0 pid
  for pid in "$@"; do before=$((before + $(kib "$pid" VmRSS))); done
  "$TOOL" idle --addr "$addr" --conns "$IDLE" --user "$USER_NAME" --password "$PASSWORD" \
    --hold-seconds 600 >"$OUT/idle-$name.out" 2>"$OUT/idle-$name.err" &
  local idle_pid=$!
  if ! wait_line "$OUT/idle-$name.out" '^ready' >/dev/null 2>&1; then
    # A failure is reported, not fatal: the other figures stand.
    echo "   $name: $(tail -1 "$OUT/idle-$name.err")"
    kill "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    record "{\"kind\":\"idle\",\"path\":\"$name\",\"conns\":$IDLE,\"failed\":true}"
    return 0
  fi
  sleep 2
  for pid in "$@"; do after=$((after + $(kib "$pid" VmRSS))); done
  kill "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" 2>/dev/null || true
  record "{\"kind\":\"idle\",\"path\":\"$name\",\"conns\":$IDLE,\"rss_before_kib\":$before,\"rss_after_kib\":$after}"
  echo "   $name: $(cat "$OUT/idle-$name.out"), RSS $before -> $after KiB"
  sleep 2
}
echo "== $IDLE idle streaming connections held open"
idle_conns gateway "$GW" "$GW_PID"
NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
# shellcheck disable=SC2086
idle_conns nginx "127.0.0.1:$NGINX_PORT" "$NGINX_PID" $NGINX_WORKERS

echo "== cold password verification (argon2), $COLD users"
users=()
for i in $(seq "$COLD"); do users+=(--users "cold-$i@contoso.example"); done
line=$("$TOOL" cold --addr "$GW" "${users[@]}" --password "$PASSWORD" --body-file bench/finditem.xml)
record "$line"
echo "   $line"

token_calls=$(curl -sS "$SIM_BASE/_sim/requests" |
  python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if "/oauth2/" in r.get("path","")))')
audit_lines=$(grep -c 'outcome="forwarded"' "$OUT/gateway.err" || true)
record "{\"kind\":\"token\",\"token_calls\":$token_calls,\"forwarded\":$audit_lines}"
echo "   token endpoint calls: $token_calls for $audit_lines forwarded requests"

META=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  mode "$([[ $QUICK == 1 ]] && echo quick || echo full)" \
  date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  load_start "$LOAD_START" \
  load "$(cut -d' ' -f1-3 /proc/loadavg)" \
  cpus "$(nproc)" \
  nginx "$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')" \
  wrk "$(wrk -v 2>&1 | head -1 | awk '{print $2}')" \
  fd_limit "$FD_LIMIT")
record "{\"kind\":\"meta\",\"meta\":$META}"

python3 bench/report.py "$RESULTS" >bench/results/latest.md
cat bench/results/latest.md
