#!/usr/bin/env python3
"""Do unknown users, wrong passwords and locked accounts cost the same? (issue 6)

Starts the real `ews-gateway serve` on loopback with a users file of N users sharing one
password, then measures, interleaved, the time to the 401 of:
  unknown  - a login name that is not in the users file,
  wrong    - a known user with a wrong password (before its lockout),
  locked   - a known user already locked out (after `max_failures` failures),
and prints the medians, spreads and the bodies/headers compared byte for byte.
Loopback only, bounded: 3 x SAMPLES requests. Usage: bench/auth-timing.py [path/to/ews-gateway] [SAMPLES]
"""
import base64, http.client, os, re, statistics, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/ews-gateway"
SAMPLES = int(sys.argv[2]) if len(sys.argv) > 2 else 60
MAX_FAILURES = 3
BODY = b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>'


def main():
    work = tempfile.mkdtemp()
    password_hash = subprocess.run([BIN, "hash-password"], input=b"right-pass\n",
                                   capture_output=True, check=True).stdout.decode().strip()
    with open(f"{work}/users.toml", "w") as f:
        for i in range(2 * SAMPLES):
            f.write(f'[[user]]\nname = "u{i}@contoso.example"\npassword_hash = "{password_hash}"\n')
    with open(f"{work}/secret", "w") as f:
        f.write("unused")
    with open(f"{work}/gw.toml", "w") as f:
        f.write(f"""
[listen]
address = "127.0.0.1:0"
[auth]
users_file = "{work}/users.toml"
cache_ttl_seconds = 1
[auth.lockout]
max_failures = {MAX_FAILURES}
max_failures_per_source = 1000000
[limits]
requests_per_second_per_principal = 0
[upstream]
ews_url = "http://127.0.0.1:9/EWS/Exchange.asmx"
[[tenant]]
tenant_id = "contoso.example"
client_id = "11111111-2222-4333-8444-555555555555"
client_secret_file = "{work}/secret"
authority = "http://127.0.0.1:9"
""")
    proc = subprocess.Popen([BIN, "serve", "--config", f"{work}/gw.toml"], stderr=subprocess.PIPE,
                            env={**os.environ, "RUST_LOG": "warn,ews_gateway::server=info"})
    addr = None
    seen = []
    for line in proc.stderr:
        seen.append(line.decode(errors="replace"))
        m = re.search(rb"addr=(\S+)", line)
        if m:
            addr = m.group(1).decode()
            break
    if addr is None:
        sys.exit("the gateway did not start:\n" + "".join(seen))
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))

    def call(user, password):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        start = time.perf_counter()
        conn.request("POST", "/EWS/Exchange.asmx", BODY,
                     {"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        headers = sorted((k.lower(), v) for k, v in resp.getheaders() if k.lower() != "date")
        return elapsed, (resp.status, headers, body)

    try:
        # Lock the second half of the users (unmeasured).
        for i in range(SAMPLES, 2 * SAMPLES):
            for _ in range(MAX_FAILURES):
                call(f"u{i}@contoso.example", "wrong")
        times = {"unknown": [], "wrong": [], "locked": []}
        answers = {}
        for i in range(SAMPLES):
            for kind, user in (("unknown", f"nobody{i}@contoso.example"),
                               ("wrong", f"u{i}@contoso.example"),
                               ("locked", f"u{SAMPLES + i}@contoso.example")):
                elapsed, answer = call(user, "wrong")
                times[kind].append(elapsed * 1000)
                answers.setdefault(kind, answer)
                assert answer == answers[kind], f"{kind}: answers differ between samples"
        # A locked account refuses even the right password, with the same answer.
        _, right_but_locked = call(f"u{SAMPLES}@contoso.example", "right-pass")
    finally:
        proc.terminate()
        proc.wait()

    identical = answers["unknown"] == answers["wrong"] == answers["locked"] == right_but_locked
    print(f"ews-gateway auth timing: {SAMPLES} samples each, interleaved, loopback, {BIN}")
    print()
    print("| case | median ms | p10 ms | p90 ms |")
    print("|---|---|---|---|")
    for kind, xs in times.items():
        q = statistics.quantiles(xs, n=10)
        print(f"| {kind} | {statistics.median(xs):.2f} | {q[0]:.2f} | {q[-1]:.2f} |")
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = max(statistics.quantiles(v, n=10)[-1] - statistics.quantiles(v, n=10)[0] for v in times.values())
    gap = max(med.values()) - min(med.values())
    print()
    print(f"largest gap between medians: {gap:.2f} ms; widest p10-p90 spread: {spread:.2f} ms")
    print(f"status, headers and body identical for unknown, wrong, locked (and locked with the right password): {identical}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
