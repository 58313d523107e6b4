"""The webhook receiver under an outsider's attack: do real deliveries still get through, and how fast?

The receiver runs as its own process, as deployed (``python -m dbt_cloud_gate.receiver serve``, default limits
unless told), posting its events to a stand-in for Prefect's ``POST /api/events`` on loopback. From this process,
all from 127.0.0.1 (as every client is behind the TLS proxy): ``--flooders`` keep-alive connections posting
unsigned requests as fast as they are answered, ``--slow`` slow connections (silent, header trickle, body trickle:
a byte every 2 s, each reopened as soon as the receiver closes it), and a real delivery, signed with the
receiver's secret, every ``--every`` s, each on a new connection, timed from the request to the answer
(``dbt_cloud_gate.stack.flood``). Two scenarios: the issue's (500 slow connections, under ``--max-connections``)
and one with more slow connections than ``--max-connections`` (``--over``), where each new connection evicts
the oldest waiting one.

    python3 -m bench.receiver_flood                 # 30 s per scenario, ~75 s
    python3 -m bench.receiver_flood --seconds 10    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dbt_cloud_gate.stack.flood import EventsSink, FloodPlan, FloodReport, run_flood
from dbt_cloud_gate.stack.services import WebhookReceiver

SECRET = "bench-secret-of-account-7-0123456789"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else 0.0


def scenario(args: argparse.Namespace, slow: int, label: str) -> None:
    """Start a receiver, run one flood against it, print what each kind of client saw."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DBT_CLOUD_WEBHOOK"))}
    limits = ["--header-timeout", str(args.timeout), "--body-timeout", str(args.timeout)]
    limits += ["--max-connections", str(args.max_connections)]
    with EventsSink() as sink, tempfile.TemporaryDirectory() as work:
        env |= {"PREFECT_API_URL": sink.api_url, "DBT_CLOUD_WEBHOOK_SECRETS": json.dumps({"account:7": SECRET})}
        with WebhookReceiver(env, Path(work) / "receiver.log", None, extra_args=limits) as receiver:
            assert receiver.process is not None
            pid = receiver.process.pid
            cpu = _cpu_seconds(pid)  # the receiver's, over the attacker's start-up too: an upper bound
            plan = FloodPlan(
                receiver.url,
                SECRET,
                seconds=args.seconds,
                slow_connections=slow,
                flooders=args.flooders,
                delivery_every_seconds=args.every,
            )
            report = run_flood(plan)
            wall = args.seconds  # of the attack (the attacker's start-up before it is not counted)
            cpu = _cpu_seconds(pid) - cpu
            rss = _peak_rss_mb(pid)
            time.sleep(1.0)  # the last events reach the sink
        print_report(label, report, wall=wall, cpu=cpu, rss=rss, events=sink.events)


def print_report(label: str, report: FloodReport, *, wall: float, cpu: float, rss: float, events: int) -> None:
    """The figures of one scenario."""
    seconds = sorted(s for _, s in report.deliveries)
    statuses = sorted({status for status, _ in report.deliveries})
    accepted = sum(1 for status, _ in report.deliveries if status == 200)
    flood = sum(report.flood.values())
    print(f"\n## {label} ({wall:.1f} s)")
    print(
        f"real deliveries: {accepted} of {len(seconds)} accepted (statuses {statuses}); answer time p50 "
        f"{_quantile(seconds, 0.5):.3f} s, p95 {_quantile(seconds, 0.95):.3f} s, max {max(seconds, default=0):.3f} s; "
        f"events at 'Prefect': {events}"
    )
    codes = ", ".join(f"{code or 'failed'}: {count}" for code, count in sorted(report.flood.items()))
    print(f"unsigned flood: {flood} requests ({flood / wall:.0f}/s): {codes}")
    for kind, lifetimes in report.slow_lifetimes.items():
        if lifetimes:
            print(
                f"slow connections, {kind}: {len(lifetimes)} closed by the receiver, lived "
                f"min {min(lifetimes):.2f} / p50 {_quantile(lifetimes, 0.5):.2f} / max {max(lifetimes):.2f} s"
            )
    answers = ", ".join(f"{line}: {count}" for line, count in report.slow_answers.most_common())
    print(f"their answers: {answers}; open when the flood ended: {report.slow_open_at_end}")
    print(f"receiver process: {cpu:.1f} s CPU ({cpu / wall:.0%} of a core), peak RSS {rss:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver_flood", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each scenario")
    parser.add_argument("--slow", type=int, default=500, help="slow connections in the first scenario")
    parser.add_argument("--over", type=int, default=1500, help="slow connections in the second scenario")
    parser.add_argument("--flooders", type=int, default=8, help="keep-alive connections posting unsigned requests")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between real deliveries")
    parser.add_argument("--timeout", type=float, default=10.0, help="the receiver's header and body deadlines")
    parser.add_argument("--max-connections", type=int, default=1000, help="the receiver's --max-connections")
    args = parser.parse_args(argv)
    print(
        f"receiver flood, {time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()} on "
        f"{os.cpu_count()} CPUs ({platform.machine()}); deadlines {args.timeout:g} s, max connections "
        f"{args.max_connections}; a delivery every {args.every:g} s; {args.flooders} flooders; a byte every 2 s"
    )
    scenario(args, args.slow, f"{args.slow} slow connections, flood, real deliveries")
    scenario(args, args.over, f"{args.over} slow connections (over --max-connections), flood, real deliveries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
