#!/usr/bin/env python3
"""Helper for load-tests/run.sh: turn wrk output and /proc samples into a markdown report.

    report.py record --target T --mode M --conc N --wrk FILE --cpu-ticks N --clk-tck N
                     --hwm-kb N >> results.jsonl
    report.py unavailable --target T --mode M --conc N --reason TEXT >> results.jsonl
    report.py render results.jsonl [--meta key=value ...]  > latest.md

`record` reads the "@@WRK {...}" line that post.lua prints from wrk's done() hook (exact request
count, duration and latency percentiles in microseconds) and joins it with the target's CPU time
and peak RSS measured by run.sh.
"""

import argparse
import json
import sys

TARGET_ORDER = {"nginx": 0, "passthrough": 1, "gateway": 2, "metered": 3}
TARGET_LABEL = {
    "nginx": "(a) nginx mock",
    "passthrough": "(b) pingora passthrough",
    "gateway": "(c) portcullis gateway",
    "metered": "(d) gateway, key with limits",
}


def parse_wrk(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("@@WRK "):
                return json.loads(line[len("@@WRK "):])
    raise SystemExit(f"report.py: no @@WRK summary line in {path} (did wrk fail? see that file)")


def cmd_record(a):
    w = parse_wrk(a.wrk)
    cpu_s = a.cpu_ticks / a.clk_tck
    dur_s = w["duration_us"] / 1e6
    reqs = w["requests"]
    row = {
        "target": a.target,
        "mode": a.mode,
        "conc": a.conc,
        "status": "ok",
        "requests": reqs,
        "duration_s": dur_s,
        "rps": reqs / dur_s if dur_s else 0.0,
        "p50_us": w["latency_us"]["p50"],
        "p99_us": w["latency_us"]["p99"],
        "mean_us": w["latency_us"]["mean"],
        "cpu_s": cpu_s,
        "req_per_cpu_s": reqs / cpu_s if cpu_s else None,
        "cpu_us_per_req": cpu_s * 1e6 / reqs if reqs else None,
        "hwm_kb": a.hwm_kb,
        "errors": sum(w["errors"].values()),
        "errors_detail": w["errors"],
    }
    print(json.dumps(row))


def cmd_unavailable(a):
    print(json.dumps({"target": a.target, "mode": a.mode, "conc": a.conc, "status": "unavailable", "reason": a.reason}))


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def cmd_render(a):
    rows = []
    with open(a.results, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    meta = dict(m.split("=", 1) for m in a.meta)
    MODE_ORDER = {"json": 0, "sse": 1, "anthropic": 2}
    rows.sort(key=lambda r: (MODE_ORDER.get(r["mode"], 9), r["conc"], TARGET_ORDER.get(r["target"], 9)))
    out = []
    w = out.append
    w("# Portcullis load test")
    w("")
    for k, v in meta.items():
        w(f"- **{k}**: {v}")
    w("")
    w("## Runs")
    w("")
    w("| mode | conc | target | req/s | p50 µs | p99 µs | CPU s | req/CPU-s | CPU µs/req | peak RSS MiB | errors |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = TARGET_LABEL.get(r["target"], r["target"])
        if r["status"] != "ok":
            w(f"| {r['mode']} | {r['conc']} | {label} | not measured (see below) | | | | | | | |")
            continue
        errs = str(r["errors"]) if r["errors"] == 0 else f"**{r['errors']}** {r['errors_detail']}"
        w(
            f"| {r['mode']} | {r['conc']} | {label} | {r['rps']:,.0f} | {r['p50_us']} | {r['p99_us']} | "
            f"{r['cpu_s']:.2f} | {fmt(r['req_per_cpu_s'], ',.0f')} | {fmt(r['cpu_us_per_req'], '.1f')} | "
            f"{r['hwm_kb'] / 1024:.1f} | {errs} |"
        )
    w("")
    w("## Gateway against the baselines (same run)")
    w("")
    w("| mode | conc | req/s (c)/(b) | CPU per req (c)/(b) | p50 (c)−(b) µs | p99 (c)−(b) µs | req/s (b)/(a) | CPU µs/req (b) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    by_key = {(r["mode"], r["conc"], r["target"]): r for r in rows if r["status"] == "ok"}
    seen = []
    for r in rows:
        key = (r["mode"], r["conc"])
        if key not in seen:
            seen.append(key)
    for mode, conc in seen:
        a_ = by_key.get((mode, conc, "nginx"))
        b = by_key.get((mode, conc, "passthrough"))
        c = by_key.get((mode, conc, "gateway"))
        g = lambda r, k: None if r is None else r[k]  # noqa: E731
        p50d = None if b is None or c is None else c["p50_us"] - b["p50_us"]
        p99d = None if b is None or c is None else c["p99_us"] - b["p99_us"]
        w(
            f"| {mode} | {conc} | {fmt(ratio(g(c, 'rps'), g(b, 'rps')), '.2f')} | "
            f"{fmt(ratio(g(c, 'cpu_us_per_req'), g(b, 'cpu_us_per_req')), '.2f')} | {fmt(p50d, '+d')} | "
            f"{fmt(p99d, '+d')} | {fmt(ratio(g(b, 'rps'), g(a_, 'rps')), '.2f')} | {fmt(g(b, 'cpu_us_per_req'), '.1f')} |"
        )
    # Metering: the same gateway with a key that has request, token and cost limits (one
    # reservation and one settlement per request) against the key without limits.
    met = [(mode, conc, by_key.get((mode, conc, "metered")), by_key.get((mode, conc, "gateway"))) for mode, conc in seen]
    met = [(mode, conc, d, c) for mode, conc, d, c in met if d and c]
    if met:
        w("")
        w("## Metering cost: (d) key with limits against (c) key without (same gateway process)")
        w("")
        w("| mode | conc | req/s (d)/(c) | CPU µs/req (d) | CPU µs/req (c) | CPU (d)−(c) µs | p50 (d)−(c) µs |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for mode, conc, d, c in met:
            dc = None if d["cpu_us_per_req"] is None or c["cpu_us_per_req"] is None else d["cpu_us_per_req"] - c["cpu_us_per_req"]
            w(
                f"| {mode} | {conc} | {fmt(ratio(d['rps'], c['rps']), '.2f')} | {fmt(d['cpu_us_per_req'], '.1f')} | "
                f"{fmt(c['cpu_us_per_req'], '.1f')} | {fmt(dc, '+.1f')} | {d['p50_us'] - c['p50_us']:+d} |"
            )
    # Translation: the same gateway streaming an Anthropic stream (translated to OpenAI chunks)
    # against streaming an OpenAI stream (re-framed only), at each concurrency.
    trans = [(conc, by_key.get(("anthropic", conc, "gateway")), by_key.get(("sse", conc, "gateway")))
             for conc in sorted({r["conc"] for r in rows})]
    trans = [(conc, t, o) for conc, t, o in trans if t and o]
    if trans:
        w("")
        w("## Translation cost: gateway `anthropic` (translated) against gateway `sse` (OpenAI wire)")
        w("")
        w("| conc | p50 anthropic−sse µs | p99 anthropic−sse µs | CPU µs/stream anthropic | CPU µs/stream sse | ratio |")
        w("|---:|---:|---:|---:|---:|---:|")
        for conc, t, o in trans:
            w(
                f"| {conc} | {t['p50_us'] - o['p50_us']:+d} | {t['p99_us'] - o['p99_us']:+d} | "
                f"{fmt(t['cpu_us_per_req'], '.1f')} | {fmt(o['cpu_us_per_req'], '.1f')} | "
                f"{fmt(ratio(t['cpu_us_per_req'], o['cpu_us_per_req']), '.2f')} |"
            )
    missing = sorted({(r["target"], r["mode"], r["reason"]) for r in rows if r["status"] != "ok"})
    if missing:
        w("")
        for t, m, reason in missing:
            w(f"- **{t} ({m}) not measured:** {reason}")
    w("")
    sys.stdout.write("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--target", required=True)
    r.add_argument("--mode", required=True)
    r.add_argument("--conc", type=int, required=True)
    r.add_argument("--wrk", required=True)
    r.add_argument("--cpu-ticks", type=int, required=True)
    r.add_argument("--clk-tck", type=int, required=True)
    r.add_argument("--hwm-kb", type=int, required=True)
    u = sub.add_parser("unavailable")
    u.add_argument("--target", required=True)
    u.add_argument("--mode", required=True)
    u.add_argument("--conc", type=int, required=True)
    u.add_argument("--reason", required=True)
    d = sub.add_parser("render")
    d.add_argument("results")
    d.add_argument("--meta", action="append", default=[])
    a = p.parse_args()
    {"record": cmd_record, "unavailable": cmd_unavailable, "render": cmd_render}[a.cmd](a)


if __name__ == "__main__":
    main()
