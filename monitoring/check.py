#!/usr/bin/env python3
"""Checks a running Prometheus against what this directory ships (standard library only).

    check.py [--url URL] targets [--wait S]          every scrape target up (waits up to S)
    check.py [--url URL] dashboard [FILE]            every query of the dashboard returns data
    check.py [--url URL] quiet                       no alert firing
    check.py [--url URL] firing ALERT [--within S]   ALERT fires within S seconds; prints when

Exit status 0 when the check holds, 1 when it does not (with what failed), 2 on bad usage.
The dashboard's Grafana variables are replaced as Grafana would with every coupon selected
($coupon: .*) and a rate window of a minute ($__rate_interval: 1m). A query that fails, returns
nothing or only NaN (a quantile of no requests) fails the check.
"""

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${coupon}": ".*",
    "$coupon": ".*",
}


def api(url, path, **params):
    query = urllib.parse.urlencode(params)
    full = f"{url.rstrip('/')}/api/v1/{path}" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(full, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def targets(url, wait):
    deadline = time.monotonic() + wait
    while True:
        try:
            active = api(url, "targets", state="active")["activeTargets"]
        except (OSError, RuntimeError) as error:
            active, problem = [], [f"Prometheus does not answer: {error}"]
        else:
            problem = [
                f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}".rstrip()
                for t in active
                if t["health"] != "up"
            ]
            if not active:
                problem = ["no active targets"]
        if not problem:
            for t in active:
                print(f"up: {t['labels'].get('job')} {t['scrapeUrl']}")
            return True
        if time.monotonic() >= deadline:
            print("targets not up:\n  " + "\n  ".join(problem))
            return False
        time.sleep(1)


def grafana_queries(dashboard):
    def walk(panels):
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel.get("title", "?"), target.get("legendFormat", ""), target["expr"]

    return list(walk(dashboard.get("panels", [])))


def substitute(expr):
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def has_data(result):
    values = []
    for sample in result["result"] if isinstance(result["result"], list) else [result["result"]]:
        value = sample["value"][1] if isinstance(sample, dict) else sample[1]
        values.append(float(value))
    return any(not math.isnan(v) for v in values), len(values)


def dashboard(url, path):
    queries = grafana_queries(json.loads(Path(path).read_text()))
    failed = []
    for title, legend, expr in queries:
        try:
            ok, series = has_data(api(url, "query", query=substitute(expr)))
            verdict = f"{series} series" if ok else ("only NaN" if series else "no data")
        except (OSError, RuntimeError) as error:
            ok, verdict = False, str(error)
        print(f"{'ok  ' if ok else 'FAIL'} {title} / {legend or expr}: {verdict}")
        if not ok:
            failed.append(f"{title}: {expr}")
    print(f"dashboard: {len(queries) - len(failed)} of {len(queries)} queries return data")
    return not failed


def alerts(url):
    return api(url, "alerts")["alerts"]


def quiet(url):
    firing = [a for a in alerts(url) if a["state"] == "firing"]
    for alert in firing:
        print(f"firing: {alert['labels'].get('alertname')} {alert['labels']}: {alert['annotations'].get('summary')}")
    if not firing:
        print("no alert firing")
    return not firing


def firing(url, name, within):
    started = time.monotonic()
    while True:
        now = [a for a in alerts(url) if a["labels"].get("alertname") == name]
        if any(a["state"] == "firing" for a in now):
            print(f"{name} firing after {time.monotonic() - started:.0f} s")
            return True
        if time.monotonic() - started > within:
            states = ", ".join(a["state"] for a in now) or "not even pending"
            print(f"{name} did not fire within {within:.0f} s ({states})")
            return False
        time.sleep(1)


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="Prometheus")
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("targets").add_argument("--wait", type=float, default=0)
    sub.add_parser("dashboard").add_argument("file", nargs="?", default=here / "dashboard.json")
    sub.add_parser("quiet")
    fire = sub.add_parser("firing")
    fire.add_argument("alert")
    fire.add_argument("--within", type=float, default=120)
    args = parser.parse_args()
    if args.check == "targets":
        ok = targets(args.url, args.wait)
    elif args.check == "dashboard":
        ok = dashboard(args.url, args.file)
    elif args.check == "quiet":
        ok = quiet(args.url)
    else:
        ok = firing(args.url, args.alert, args.within)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
