"""Turns bench/out/results.jsonl (written by bench/run.sh) into the markdown report."""

import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
meta = next((r["meta"] for r in rows if r.get("kind") == "meta"), {})
PATHS = ["direct", "nginx", "gateway"]


def runs(load, conc, path):
    return [r for r in rows if r.get("load") == load and r["conc"] == conc and r["path"] == path]


def rps(r):
    return r["requests"] / (r["duration_us"] / 1e6)


def spread(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return med, fmt(med)
    return med, f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"


def verdict(ok):
    return "met" if ok else "**not met**"


out = []
w = out.append
w(f"# ews-gateway benchmark ({meta.get('mode', '?')} run)")
w("")
w(
    f"{meta.get('date', '?')}, commit `{meta.get('commit', '?')}`, {meta.get('cpus', '?')} CPUs, "
    f"load average at start {meta.get('load_start', '?')}, at end {meta.get('load', '?')} "
    f"(the machine is shared; compare the ratios, measured in interleaved rounds), "
    f"nginx {meta.get('nginx', '?')}, wrk {meta.get('wrk', '?')}. Everything on loopback; the "
    "upstream is a fixed-response hyper server (`ews-gateway-bench upstream`). Medians, with the "
    "range over the rounds in brackets."
)
w("")
errors = sum(r.get("errors", 0) + r.get("non2xx", 0) for r in rows if "requests" in r)
targets = []

w("## 2 KB SOAP (FindItem, POST with Basic auth)")
w("")
w("| concurrency | path | requests/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx | req/s vs direct |")
w("|---|---|---|---|---|---|---|---|")
concs = sorted({r["conc"] for r in rows if r.get("load") == "2k"})
for c in concs:
    med = {}
    for p in PATHS:
        rs = runs("2k", c, p)
        if not rs:
            continue
        r_med, r_txt = spread([rps(r) for r in rs], lambda v: f"{v:,.0f}")
        p50_med, p50_txt = spread([r["p50_us"] / 1000 for r in rs], lambda v: f"{v:.2f}")
        p99_med, p99_txt = spread([r["p99_us"] / 1000 for r in rs], lambda v: f"{v:.2f}")
        med[p] = (r_med, p99_med)
        ratios = ["", "", ""]
        if p != "direct" and "nginx" in med and "direct" in med:
            if p == "gateway":
                ratios[0] = f"{r_med / med['nginx'][0]:.2f}x"
                ratios[1] = f"{p99_med / med['nginx'][1]:.2f}x"
            ratios[2] = f"{r_med / med['direct'][0]:.2f}x"
        w(f"| {c} | {p} | {r_txt} | {p50_txt} | {p99_txt} | {' | '.join(ratios)} |")
    if "gateway" in med and "nginx" in med:
        targets.append(
            (f"2 KB, concurrency {c}: requests/s >= 1.0x nginx", f"{med['gateway'][0] / med['nginx'][0]:.2f}x",
             med["gateway"][0] >= med["nginx"][0]))
        targets.append(
            (f"2 KB, concurrency {c}: p99 <= 1.2x nginx", f"{med['gateway'][1] / med['nginx'][1]:.2f}x",
             med["gateway"][1] <= 1.2 * med["nginx"][1]))
w("")

big = [r for r in rows if r.get("load") == "10m"]
if big:
    conc = big[0]["conc"]
    w(f"## 10 MiB bodies (CreateAttachment, concurrency {conc})")
    w("")
    w("| path | MiB/s | requests/s | vs nginx | vs direct |")
    w("|---|---|---|---|---|")
    med = {}
    for p in PATHS:
        rs = runs("10m", conc, p)
        if not rs:
            continue
        size = 10 * 1024 * 1024
        mb_med, mb_txt = spread([rps(r) * size / 2**20 for r in rs], lambda v: f"{v:,.0f}")
        _, r_txt = spread([rps(r) for r in rs], lambda v: f"{v:,.1f}")
        med[p] = mb_med
        vs_n = f"{mb_med / med['nginx']:.2f}x" if p == "gateway" and "nginx" in med else ""
        vs_d = f"{mb_med / med['direct']:.2f}x" if p != "direct" and "direct" in med else ""
        w(f"| {p} | {mb_txt} | {r_txt} | {vs_n} | {vs_d} |")
    if "gateway" in med and "nginx" in med:
        targets.append(("10 MiB bodies: throughput >= nginx", f"{med['gateway'] / med['nginx']:.2f}x",
                        med["gateway"] >= med["nginx"]))
    w("")

w("## Memory, tokens, password verification (gateway)")
w("")
w("| measure | figure |")
w("|---|---|")
for r in rows:
    if r.get("kind") == "upload":
        growth = (r["hwm_kib"] - r["rss_before_kib"]) / 1024
        mib = r["bytes"] / 2**20
        w(f"| one {mib:.0f} MiB upload: peak RSS growth (VmHWM - VmRSS before) | {growth:.1f} MiB "
          f"(status {r['status']}, {r['seconds']:.2f} s, {mib / r['seconds']:.0f} MiB/s) |")
        targets.append(("100 MiB upload: peak memory growth < 16 MB", f"{growth:.1f} MiB",
                        r["status"] == 200 and growth * 1024 * 1024 < 16e6))
for r in rows:
    if r.get("kind") == "idle":
        if r.get("failed"):
            w(f"| {r['conns']:,} idle streaming connections via {r['path']} | failed (see bench/out) |")
            if r["path"] == "gateway":
                targets.append(("idle streaming connections < 64 KB each", "failed", False))
            continue
        per = (r["rss_after_kib"] - r["rss_before_kib"]) / r["conns"]
        w(f"| {r['conns']:,} idle streaming connections via {r['path']}: RSS per connection "
          f"(client and upstream side) | {per:.1f} KiB |")
        if r["path"] == "gateway":
            targets.append((f"{r['conns']:,} idle streaming connections: < 64 KB each", f"{per:.1f} KiB",
                            per * 1024 < 64000))
for r in rows:
    if r.get("kind") == "cold":
        w(f"| cold password verification (argon2id, first request of a user, new connection) | "
          f"{r['cold_us_median'] / 1000:.1f} ms median ({r['cold_us_min'] / 1000:.1f}–"
          f"{r['cold_us_max'] / 1000:.1f}) over {r['n']} users; the same request cached: "
          f"{r['warm_us_median'] / 1000:.2f} ms |")
for r in rows:
    if r.get("kind") == "token":
        w(f"| token endpoint calls (simulator's request log) | {r['token_calls']} for "
          f"{r['forwarded']:,} forwarded requests |")
        targets.append(("token endpoint: zero calls per request in steady state",
                        f"{r['token_calls']} in total", r["token_calls"] <= 1))
w("")
w(f"Transport errors and non-2xx answers over all load runs: {errors}.")
w("")
w("## Targets")
w("")
w("| target | measured | |")
w("|---|---|---|")
for name, figure, ok in targets:
    w(f"| {name} | {figure} | {verdict(ok)} |")
print("\n".join(out))
