#!/usr/bin/env bash
# Runs ews-javascript-api (real client, Node) against the real `ews-gateway demo` binary on loopback.
# Usage: tests/interop/run-ews-js.sh [path/to/ews-gateway]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/ews-gateway}"
(cd "$here/js" && npm ci --no-audit --no-fund --loglevel=error)
log="$(mktemp)"
"$bin" demo --listen 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  grep -q "EWS URL" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "demo exited early"; exit 1; }
  sleep 0.1
done
ews_url=$(awk '/^  EWS URL/ {print $NF; exit}' "$log")
sim_url=$(awk '/^  simulated Exchange Online/ {print $NF; exit}' "$log")
[ -n "$ews_url" ] && [ -n "$sim_url" ] || { cat "$log"; echo "could not read the demo's URLs"; exit 1; }
echo "gateway $ews_url, simulator $sim_url"
cd "$here/js"
EWS_URL="$ews_url" SIM_URL="$sim_url" node --test --test-concurrency=1 ews-js.test.js
