#!/usr/bin/env python3
"""Checks monitoring/: the Grafana dashboard's shape, and that every metric the dashboard and
the alert rules name is one that tether exposes.

usage: check.py METRICS_DIR PROMQL_RULES_OUT
  METRICS_DIR holds scrapes (*.prom) of a running conductor and agent; PROMQL_RULES_OUT is
  written with the dashboard's expressions as recording rules, for `promtool check rules`
  to parse them.
"""
import json
import pathlib
import re
import sys

repo = pathlib.Path(__file__).resolve().parents[2]
monitoring = repo / "monitoring"
# Series that only a successful Ironic sync pass shows (the test runs no Ironic): taken from
# the source instead of a scrape.
AFTER_IRONIC_SUCCESS = {
    "tether_conductor_ironic_sync_duration_seconds": "tether_conductor_ironic_sync_duration",
    "tether_conductor_ironic_last_success_age_seconds": "tether_conductor_ironic_last_success_age",
}
# Series that Prometheus makes itself.
PROMETHEUS = {"up"}
NAME = re.compile(r"\btether_[a-z0-9_]+\b")
failures = []


def fail(message):
    failures.append(message)


def exposed(metrics_dir):
    """Every sample name in the scrapes, and the ones every declared family may have."""
    names = set()
    for scrape in pathlib.Path(metrics_dir).glob("*.prom"):
        for line in scrape.read_text().splitlines():
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split(" ", 3)
                names.add(family)
                if kind == "counter":
                    names.add(family if family.endswith("_total") else family + "_total")
                elif kind == "histogram":
                    names.update(family + s for s in ("_bucket", "_sum", "_count"))
            elif line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    source = "\n".join(p.read_text() for p in (repo / "src").rglob("*.rs"))
    for name, registered in AFTER_IRONIC_SUCCESS.items():
        if f'"{registered}"' in source:
            names.add(name)
    return names


def check_dashboard(path):
    """A dashboard Grafana imports: its PromQL expressions, for the other checks."""
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        fail(f"{path.name}: not JSON: {e}")
        return []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            fail(f"{path.name}: no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
        fail(f"{path.name}: no datasource variable DS_PROMETHEUS")
    exprs, ids = [], set()
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            fail(f"{path.name}: panel id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            fail(f"{path.name}: panel {title!r} has no gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            fail(f"{path.name}: panel {title!r} does not use ${{DS_PROMETHEUS}}")
        if not panel.get("targets"):
            fail(f"{path.name}: panel {title!r} has no query")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if not expr.strip():
                fail(f"{path.name}: panel {title!r} has an empty query")
            exprs.append((title, expr))
    for name, variable in variables.items():
        if variable.get("type") == "query":
            exprs.append((f"variable {name}", variable.get("definition", "")))
    return exprs


def check_names(where, text, names):
    for name in sorted(set(NAME.findall(text)) - names):
        fail(f"{where}: {name} is not a metric tether exposes")
    # Any other metric selected by name must be one Prometheus makes.
    for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", text):
        if not name.startswith("tether_") and name not in PROMETHEUS and name != "label_values":
            fail(f"{where}: {name} is not a metric tether exposes")


def promql_as_rules(exprs, out):
    """Grafana's variables replaced by what Prometheus would get, one recording rule each."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(e for e in exprs if not e[0].startswith("variable")):
        expr = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                .replace("$conductor", ".*").replace("$agent", ".*"))
        lines += [f"      - record: dashboard:expr{i}", f"        expr: {json.dumps(expr)}"]
    pathlib.Path(out).write_text("\n".join(lines) + "\n")


def main():
    metrics_dir, rules_out = sys.argv[1:3]
    names = exposed(metrics_dir)
    if not any(n.startswith("tether_conductor_") for n in names) or not any(
        n.startswith("tether_agent_") for n in names
    ):
        fail(f"the scrapes in {metrics_dir} lack the conductor's or the agent's metrics")
    exprs = check_dashboard(monitoring / "grafana-dashboard.json")
    for where, expr in exprs:
        check_names(f"grafana-dashboard.json, {where}", expr, names)
    rules = (monitoring / "alerts.yml").read_text()
    exprs_in_rules = re.findall(r"^\s+expr: (.*(?:\n\s{10,}.*)*)", rules, re.M)
    if not exprs_in_rules:
        fail("alerts.yml: no expr found")
    for expr in exprs_in_rules:
        check_names("alerts.yml", expr, names)
    # Names in the annotations too: an operator is sent to look at them.
    check_names("alerts.yml", rules, names)
    promql_as_rules(exprs, rules_out)
    for message in failures:
        print(f"check.py: {message}", file=sys.stderr)
    print(f"check.py: {len(exprs)} dashboard queries and {len(exprs_in_rules)} alert expressions "
          f"over {len(names)} exposed series names", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
