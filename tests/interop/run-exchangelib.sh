#!/usr/bin/env bash
# Runs exchangelib (real client) against the real `ews-gateway demo` binary on loopback.
# Usage: tests/interop/run-exchangelib.sh [path/to/ews-gateway]
# EWS_RECORD_DIR=DIR puts tests/interop/record_proxy.py between exchangelib and the gateway and
# records every request into DIR (see fixtures/recorded/README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/ews-gateway}"
work="$(mktemp -d)"
log="$work/demo.log"
# HTTPS with a certificate for the demo domain's Autodiscover names (the Autodiscover scenario).
"$bin" demo --listen 127.0.0.1:0 --https --tls-name contoso.example \
  --tls-name autodiscover.contoso.example --ca-out "$work/ca.pem" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  grep -q "EWS URL" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "demo exited early"; exit 1; }
  sleep 0.1
done
ews_url=$(awk '/^  EWS URL/ {print $NF; exit}' "$log")
sim_url=$(awk '/^  simulated Exchange Online/ {print $NF; exit}' "$log")
[ -n "$ews_url" ] && [ -n "$sim_url" ] || { cat "$log"; echo "could not read the demo's URLs"; exit 1; }
echo "gateway $ews_url, simulator $sim_url"
if [ -n "${EWS_RECORD_DIR:-}" ]; then
  EWS_RECORD_CA="$work/ca.pem" python3 -u "$here/record_proxy.py" "$ews_url" "$sim_url" "$EWS_RECORD_DIR" >"$log.proxy" 2>&1 &
  proxy=$!
  trap 'kill $pid $proxy 2>/dev/null || true; wait $pid $proxy 2>/dev/null || true; cat "$log.proxy"; rm -f "$log" "$log.proxy"' EXIT
  for _ in $(seq 1 100); do
    grep -q "^recording proxy" "$log.proxy" && break
    sleep 0.1
  done
  ews_url="$(awk '/^recording proxy/ {print $NF; exit}' "$log.proxy")/EWS/Exchange.asmx"
  echo "recording through $ews_url into $EWS_RECORD_DIR"
fi
python3 "$here/exchangelib_demo.py" "$ews_url" "$sim_url" "$work/ca.pem"
