#!/usr/bin/env python3
"""latency_svg.py RESULTS_DIR [OUT.svg]  -- chart the latency percentiles of every target.

Reads the JSON files tidings-bench wrote (bench/results/*.json) and draws, for each of the
scenarios unicast, cross-replica and fanout, one panel: publish-to-receive latency at p50, p90,
p99, p99.9 and max, one line per label (tidings-pg, nchan-memory, nchan-redis, ...), on a log
scale in milliseconds. Only the Python standard library. Default output: RESULTS_DIR/latency.svg.
"""
import glob
import json
import math
import os
import sys
from html import escape

PCTS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")]
PANELS = [("unicast", "unicast: 10,000 users, 2,000/s"),
          ("cross-replica", "cross-replica (via Redis)"),
          ("fanout", "fan-out: every delivery of 1,000")]
COLORS = {"tidings": ["#d62728", "#ff7f0e", "#8c564b"], "nchan": ["#1f77b4", "#2ca02c", "#17becf"]}
FIXED = {"tidings-pg": "#d62728", "tidings-pg-redis": "#ff7f0e",
         "nchan-memory": "#1f77b4", "nchan-redis": "#2ca02c"}


def load(results):
    runs = {}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        lat = doc.get("latency_us") or {}
        if doc.get("scenario") not in dict(PANELS) or not lat.get("count"):
            continue
        runs.setdefault(doc["scenario"], []).append(doc)
    return runs


def panel(out, x0, y0, w, h, title, docs):
    values = [d["latency_us"][k] / 1000.0 for d in docs for k, _ in PCTS]
    lo = 10 ** math.floor(math.log10(max(min(values), 0.01)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    left, right, top, bottom = 56, 12, 30, 40
    pw, ph = w - left - right, h - top - bottom

    def ypos(v):
        v = max(v, lo)
        return y0 + top + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph

    def xpos(i):
        return x0 + left + (i + 0.5) * pw / len(PCTS)

    out.append(f'<text x="{x0 + w / 2}" y="{y0 + 18}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
    out.append(f'<rect x="{x0 + left}" y="{y0 + top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    decade = lo
    while decade <= hi * 1.0001:
        for m in (1, 2, 5):
            v = decade * m
            if v < lo or v > hi * 1.0001:
                continue
            y = ypos(v)
            out.append(f'<line x1="{x0 + left}" x2="{x0 + left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#ddd" stroke-width="{1 if m == 1 else 0.5}"/>')
            label = f"{v:g}"
            out.append(f'<text x="{x0 + left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{label}</text>')
        decade *= 10
    out.append(f'<text x="{x0 + 14}" y="{y0 + top + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 {x0 + 14} {y0 + top + ph / 2})">milliseconds (log)</text>')
    for i, (_, name) in enumerate(PCTS):
        out.append(f'<text x="{xpos(i):.1f}" y="{y0 + top + ph + 16}" text-anchor="middle" font-size="12">{name}</text>')
    used = {"tidings": 0, "nchan": 0}
    for j, d in enumerate(sorted(docs, key=lambda d: (d.get("target") != "tidings", d.get("label", "")))):
        fam = "tidings" if d.get("target") == "tidings" else "nchan"
        color = FIXED.get(d.get("label")) or COLORS[fam][used[fam] % len(COLORS[fam])]
        used[fam] += 1
        pts = [(xpos(i), ypos(d["latency_us"][k] / 1000.0)) for i, (k, _) in enumerate(PCTS)]
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            color, " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
        for (x, y), (k, _) in zip(pts, PCTS):
            v = d["latency_us"][k] / 1000.0
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>'
                       f'{escape(d.get("label", ""))} {k}: {v:.2f} ms</title></circle>')
        ly = y0 + h - 8 - 0
        lx = x0 + left + j * 150
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="3" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly - 4}" font-size="11">{escape(d.get("label", "?"))}</text>')


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    target = sys.argv[2] if len(sys.argv) > 2 else os.path.join(results, "latency.svg")
    runs = load(results)
    panels = [(k, t) for k, t in PANELS if k in runs]
    if not panels:
        sys.exit(f"no latency results in {results}")
    w, h = 470, 330
    width, height = w * len(panels), h + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="8" y="{height - 8}" font-size="11" fill="#555">publish-to-receive latency, '
           f'SSE, same machine; tidings-bench</text>']
    for i, (key, title) in enumerate(panels):
        panel(out, i * w, 0, w, h, title, runs[key])
    out.append("</svg>")
    with open(target, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
