#!/usr/bin/env python3
"""Prints a Grafana dashboard's PromQL queries as a Prometheus rule file (one recording rule
per panel target, dashboard variables replaced by sample values), so that
`promtool check rules` parses every query the dashboard sends.

    python3 .ci/dashboard-queries.py charts/quiver/dashboards/quiver-index.json > q.yaml
    promtool check rules q.yaml
"""
import json
import re
import sys

# Values that stand for the dashboard's variables while parsing; a variable the dashboard
# does not define fails here rather than in Grafana.
SAMPLE = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def main(path):
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    defined = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    targets = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                targets.append((p.get("title", "?"), t["expr"]))

    walk(dash.get("panels", []))
    if not targets:
        sys.exit(f"{path}: no panel targets")
    print("groups:\n  - name: dashboard-queries\n    rules:")

    def value(m):
        name = m.group(1) or m.group(2)
        if name in SAMPLE:
            return SAMPLE[name]
        if name not in defined:
            sys.exit(f"{path}: a query uses ${name}, which the dashboard does not define")
        return "sample"

    for i, (title, expr) in enumerate(targets):
        expr = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)
        print(f"      - record: dashboard_query_{i}  # {title}")
        print(f"        expr: {json.dumps(expr)}")


if __name__ == "__main__":
    main(sys.argv[1])
