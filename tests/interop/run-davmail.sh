#!/usr/bin/env bash
# Runs DavMail 6 (real client, EWS mode, Basic auth) against the real `ews-gateway demo` binary on
# loopback, driven over IMAP by tests/interop/davmail_imap.py.
# Usage: tests/interop/run-davmail.sh [path/to/ews-gateway]
# Installs the Debian package `davmail` when it is missing (apt-get, as root or through sudo).
# EWS_RECORD_DIR=DIR puts tests/interop/record_proxy.py between DavMail and the gateway and
# records every request into DIR (see fixtures/recorded/README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/ews-gateway}"

if ! command -v davmail >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends davmail >/dev/null
fi
jar=/usr/share/davmail/davmail.jar
[ -f "$jar" ] || { echo "DavMail is installed but $jar is missing"; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" demo --listen 127.0.0.1:0 >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "EWS URL" "$work/demo.log" && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/demo.log"; echo "demo exited early"; exit 1; }
  sleep 0.1
done
ews_url=$(awk '/^  EWS URL/ {print $NF; exit}' "$work/demo.log")
sim_url=$(awk '/^  simulated Exchange Online/ {print $NF; exit}' "$work/demo.log")
[ -n "$ews_url" ] && [ -n "$sim_url" ] || { cat "$work/demo.log"; echo "could not read the demo's URLs"; exit 1; }
echo "gateway $ews_url, simulator $sim_url"

davmail_url="$ews_url"
if [ -n "${EWS_RECORD_DIR:-}" ]; then
  python3 -u "$here/record_proxy.py" "$ews_url" "$sim_url" "$EWS_RECORD_DIR" >"$work/proxy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    grep -q "^recording proxy" "$work/proxy.log" && break
    sleep 0.1
  done
  davmail_url="$(awk '/^recording proxy/ {print $NF; exit}' "$work/proxy.log")/EWS/Exchange.asmx"
  echo "recording through $davmail_url into $EWS_RECORD_DIR"
fi

# A free loopback port for IMAP (the kernel picks it; DavMail binds it right after).
imap_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s#@EWS_URL@#$davmail_url#" -e "s#@IMAP_PORT@#$imap_port#" -e "s#@LOG_FILE@#$work/davmail.log#" \
  "$here/davmail/davmail.properties.in" >"$work/davmail.properties"

# Headless server mode: no GUI, no tray, settings from the file only.
java -Djava.awt.headless=true -jar "$jar" -server "$work/davmail.properties" >"$work/davmail.out" 2>&1 &
pids+=($!)
davmail_pid=$!

show_logs() {
  echo "---- DavMail log"; cat "$work/davmail.log" "$work/davmail.out" 2>/dev/null | tail -n 300
  echo "---- gateway demo log"; tail -n 100 "$work/demo.log"
  [ -f "$work/proxy.log" ] && { echo "---- recording proxy log"; cat "$work/proxy.log"; }
  return 0
}

for _ in $(seq 1 300); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $imap_port), 1).close()" 2>/dev/null && break
  kill -0 "$davmail_pid" 2>/dev/null || { show_logs; echo "DavMail exited early"; exit 1; }
  sleep 0.1
done

status=0
timeout 150 python3 "$here/davmail_imap.py" "$imap_port" "$sim_url" || status=$?
if [ "$status" -ne 0 ]; then
  show_logs
  echo "DavMail interop failed ($status)"
fi
exit "$status"
