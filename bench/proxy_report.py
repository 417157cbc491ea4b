#!/usr/bin/env python3
"""Prints hoist's proxy figures from the shared harness's results.json: per round the
ratios hoist/nginx and hoist/haproxy of requests/s and p99, their geometric means, CPU
per request and RSS, and the switch-under-load rows. Figures only, no pass/fail."""
import json
import math
import sys


def geo(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main(path):
    data = json.load(open(path))
    rounds = (data.get("proxy") or {}).get("rounds") or {}
    ratios = {"nginx": {"rps": [], "p99": [], "cpu": []}, "haproxy": {"rps": [], "p99": [], "cpu": []}}
    print("round  anchor    hoist rps  anchor rps  rps ratio  hoist p99  anchor p99  p99 ratio  hoist µs/req  anchor µs/req  hoist RSS MB")
    for rnd in sorted(rounds, key=int):
        rows = {r["name"]: r for r in rounds[rnd]}
        ours = rows.get("hoist")
        if not ours:
            continue
        for anchor in ("nginx", "haproxy"):
            a = rows.get(anchor)
            if not a or not a.get("rps") or not ours.get("rps"):
                continue
            rr = ours["rps"] / a["rps"]
            pr = ours["p99_ms"] / a["p99_ms"] if a.get("p99_ms") else float("nan")
            ratios[anchor]["rps"].append(rr)
            ratios[anchor]["p99"].append(pr)
            if ours.get("proxy_cpu_us_per_req") and a.get("proxy_cpu_us_per_req"):
                ratios[anchor]["cpu"].append(ours["proxy_cpu_us_per_req"] / a["proxy_cpu_us_per_req"])
            print(f"{rnd:>5}  {anchor:<8} {ours['rps']:>10.0f}  {a['rps']:>10.0f}  {rr:>9.3f}  "
                  f"{ours['p99_ms']:>9.2f}  {a['p99_ms']:>10.2f}  {pr:>9.3f}  "
                  f"{ours.get('proxy_cpu_us_per_req') or float('nan'):>12.1f}  "
                  f"{a.get('proxy_cpu_us_per_req') or float('nan'):>13.1f}  "
                  f"{ours.get('rss_mb') or float('nan'):>12.1f}")
    for anchor, r in ratios.items():
        if r["rps"]:
            print(f"geometric mean over {len(r['rps'])} rounds: hoist/{anchor} rps {geo(r['rps']):.3f}, "
                  f"p99 {geo(r['p99']):.3f}, CPU/request {geo(r['cpu']):.3f} (p99 and CPU < 1 are better)")
    switch = data.get("switch") or []
    if switch:
        print("\nswitch under load: name, switches confirmed, requests, failed total, switch ms p50/max")
        for z in switch:
            print(f"  {z['name']:<18} {z.get('confirmed')}/{z.get('actions')}  {z.get('requests')}  "
                  f"failed {z.get('failed_total')}  {z.get('action_ms_p50')}/{z.get('action_ms_max')} ms")
    for s in data.get("skipped") or []:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hoist-bench-proxy/results.json")
