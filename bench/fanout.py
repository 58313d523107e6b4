"""A fan-out side by side: ``run_dbt_cloud_jobs`` and prefect-dbt 0.7.25 running N jobs at once, same emulator.

One parent process starts the emulator (plain HTTP on loopback; a TLS relay in front for prefect-dbt, which only
speaks https), and a Prefect test server. Each tool gets N jobs of its own with identical specs (20 past runs of
about ``--mean`` seconds, CV 0.1; queueing 2 s, starting 3 s) and the same seeded run times, and runs them in one
worker process of its own, one tool after the other (so neither takes the other's CPU): ours as one
``run_dbt_cloud_jobs`` call at its defaults, prefect-dbt as N ``trigger_dbt_cloud_job_run_and_wait_for_completion``
subflows gathered in one async parent, at its defaults.

Measured per tool: dbt Cloud requests per run (by kind), detection lag per run (from the run's end in dbt Cloud
to the read that saw it: a fan-out returns once all are done, so the flow's return says nothing of each run),
when the first trigger left after the flow started and over how long the triggers spread, the worker's wall,
CPU seconds and peak RSS, and how many runs succeeded.

Run it in the ``compare`` venv (the main environment has no prefect-dbt; ``--tools ours`` runs without it)::

    /tmp/compare-venv/bin/python -m bench.fanout --runs 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from collections import Counter
from typing import Any

from bench.compare import (
    ACCOUNT,
    QUEUE_SECONDS,
    START_SECONDS,
    TOKEN,
    Case,
    _fmt,
    _job_of_request,
    _kind,
    _prefect_server,
    _quantile,
    draws,
    peak_rss_mb,
    run_worker,
)

FIRST_JOB = {"ours": 5000, "theirs": 7000}


def _worker(tool: str, jobs: list[int], base_url: str, domain: str) -> dict[str, Any]:
    """Run ``jobs`` at once with ``tool``; what it took (printed as one JSON line by ``main``)."""
    start = time.time()
    error = None
    if tool == "ours":
        from dbt_cloud_gate import DbtCloudCredentials, run_dbt_cloud_jobs

        creds = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=base_url)
        try:
            run_dbt_cloud_jobs(list(jobs), creds)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        from prefect import flow
        from prefect_dbt.cloud import DbtCloudCredentials as TheirCredentials
        from prefect_dbt.cloud.jobs import trigger_dbt_cloud_job_run_and_wait_for_completion

        their_creds = TheirCredentials(api_key=TOKEN, account_id=ACCOUNT, domain=domain)

        @flow(name="prefect-dbt-fan-out")
        async def fan_out() -> list[Any]:
            calls = (
                trigger_dbt_cloud_job_run_and_wait_for_completion(dbt_cloud_credentials=their_creds, job_id=job)
                for job in jobs
            )
            return list(await asyncio.gather(*calls, return_exceptions=True))

        outcomes = asyncio.run(fan_out())
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            error = f"{len(failed)} of {len(jobs)} failed, e.g. {type(failed[0]).__name__}: {str(failed[0])[:300]}"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "tool": tool,
        "start": start,
        "returned": time.time(),
        "error": error,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": peak_rss_mb(),
    }


def _spawn(tool: str, jobs: list[int], urls: dict[str, str], ca_file: str) -> dict[str, Any]:
    args = ["bench.fanout", "--worker", tool, ",".join(map(str, jobs)), urls["http"], urls["domain"]]
    return run_worker(tool, args, urls["api"], ca_file)


def analyse(emulator: Any, jobs: list[int], result: dict[str, Any]) -> dict[str, Any]:
    """Requests per run by kind, lag per run, trigger timing, outcomes, for one tool's jobs."""
    mine = set(jobs)
    reqs = [
        r for r in emulator.requests if not r.path.startswith("/_emulator") and _job_of_request(emulator, r) in mine
    ]
    # A list of runs across jobs names no single job: count those the tool sent in its window too.
    window = (result["start"], result["returned"] + 0.5)
    unattributed = [
        r
        for r in emulator.requests
        if not r.path.startswith("/_emulator")
        and _job_of_request(emulator, r) is None
        and window[0] <= r.at <= window[1]
    ]
    runs = [r for job in jobs for r in emulator.runs_of(job) if not r.cause.startswith("History")]
    kinds = Counter(_kind(r) for r in reqs) + Counter(_kind(r) for r in unattributed)
    seen: dict[int, float] = {}
    for req in reqs:
        if _kind(req) != "run-read":
            continue
        run = emulator.runs.get(int(req.path.rstrip("/").rsplit("/", 1)[1]))
        if run is not None and run.id not in seen and req.at >= run.end():
            seen[run.id] = req.at - run.end()
    # A run whose end the flow learned from a list of runs (our first poll can be one): the list that saw it.
    for req in reqs:
        if _kind(req) == "list-runs":
            job = _job_of_request(emulator, req)
            for run in runs:
                if run.job_id == job and run.id not in seen and req.at >= run.end() and req.at >= run.created:
                    seen[run.id] = req.at - run.end()
    triggers = sorted(r.at for r in reqs if _kind(r) == "trigger")
    lags = list(seen.values())
    now = time.time()
    return {
        "runs": len(runs),
        "succeeded": sum(1 for r in runs if r.status_at(now).name.lower() == "success"),
        "requests_per_run": sum(kinds.values()) / max(1, len(runs)),
        "kinds": {k: v / max(1, len(runs)) for k, v in sorted(kinds.items())},
        "lag_p50": _quantile(lags, 0.5),
        "lag_p95": _quantile(lags, 0.95),
        "lag_max": max(lags) if lags else None,
        "first_trigger": triggers[0] - result["start"] if triggers else None,
        "trigger_spread": triggers[-1] - triggers[0] if triggers else None,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100, help="jobs run at once by each tool (one run each)")
    parser.add_argument("--mean", type=float, default=60.0, help="mean run time of the jobs, seconds")
    parser.add_argument("--tools", default="ours,theirs", help="ours, theirs, or both (comma-separated)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    return parser


def _measure(args: argparse.Namespace, tools: list[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    from bench.tls_relay import TlsRelay
    from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
    from dbt_cloud_gate.dbtcloud_api.openapi import load_default_validator

    case = Case("fan-out", args.mean)
    history = draws(case, 20, args.seed + 1000)
    times = draws(case, args.runs, args.seed)
    jobs = {tool: [FIRST_JOB[tool] + i for i in range(args.runs)] for tool in tools}
    specs = [
        JobSpec(
            id=job,
            name=f"fan-out {tool} {i}",
            queue_seconds=QUEUE_SECONDS,
            start_seconds=START_SECONDS,
            run_seconds=times[i],
            history_seconds=history,
        )
        for tool in tools
        for i, job in enumerate(jobs[tool])
    ]
    emulator = Emulator(specs, account_id=ACCOUNT, token=TOKEN, validator=load_default_validator())
    rows = []
    with tempfile.TemporaryDirectory(prefix="dcg-fanout-home-") as home:
        os.environ["PREFECT_HOME"] = home
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with EmulatorServer(emulator) as server, TlsRelay(server.port) as relay, _prefect_server() as api:
            urls = {"api": api, "http": server.url, "domain": relay.domain}
            for tool in tools:
                result = _spawn(tool, jobs[tool], urls, str(relay.ca_file))
                rows.append((tool, result, analyse(emulator, jobs[tool], result)))
                print(f"  done: {tool} in {result['returned'] - result['start']:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        tool, jobs, base_url, domain = args.worker
        print(json.dumps(_worker(tool, [int(j) for j in jobs.split(",")], base_url, domain)), flush=True)
        return 0
    tools = [t for t in args.tools.split(",") if t]
    if not tools or set(tools) - set(FIRST_JOB) or args.runs < 1:
        parser.error("--tools takes ours and/or theirs, --runs at least 1")
    print(f"{args.runs} runs at once per tool, ~{args.mean:g} s each (20 past runs, CV 0.1), seed {args.seed}")
    rows = _measure(args, tools)
    print(
        "\n| tool | runs ok | requests/run | lag p50 | lag p95 | lag max | 1st trigger | trigger spread "
        "| wall | CPU s | peak RSS | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tool, result, fig in rows:
        print(
            f"| {tool} | {fig['succeeded']}/{fig['runs']} | {fig['requests_per_run']:.2f} | {_fmt(fig['lag_p50'], ' s')} "
            f"| {_fmt(fig['lag_p95'], ' s')} | {_fmt(fig['lag_max'], ' s')} | {_fmt(fig['first_trigger'], ' s')} "
            f"| {_fmt(fig['trigger_spread'], ' s')} | {result['returned'] - result['start']:.1f} s "
            f"| {result['cpu']:.1f} | {result['peak_rss_mb']:.0f} MB | {result['error'] or ''} |"
        )
    for tool, _, fig in rows:
        print(f"{tool}: requests per run by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in fig["kinds"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
