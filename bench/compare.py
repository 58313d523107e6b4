"""Side by side: this project's ``run_dbt_cloud_job`` flow and prefect-dbt 0.7.25's dbt Cloud flow, same emulator.

One parent process starts the emulator (plain HTTP on loopback), a TLS relay in front of it for prefect-dbt (which
only speaks https; a throwaway CA, trusted through ``SSL_CERT_FILE`` in its worker only), and a Prefect test
server. Each (tool, case) runs in its own worker process (so its peak RSS is its own) against its own emulator job,
with identical job specs and the same seeded run durations for both tools, at each tool's default settings.

Cases: ``60s`` (a ~60 s job with 20 past runs, CV 0.1), ``20min`` (the same at ~20 min, real time: the emulator
has no time scale; full mode only, 1 cycle), ``no-history`` (~60 s, no past runs), ``cancel`` (cancelled from
outside 15 s into the run), ``error`` (a job with a 60 s history whose run fails after 8 s), ``before-band`` and
``after-band`` (successes of 40 s and 90 s on that history). Queueing 2 s, starting
3 s. The one setting changed from a default: prefect-dbt's ``max_wait_seconds`` (900 s) is raised to 1,800 s on
the 20 min case, where its default would end the wait before the run ends.

Measured per flow call ("per dbt run"): HTTP requests from the emulator's log (trigger, polls = reads of the run
up to the first one at or after its end, others = everything else), Prefect task runs (from the Prefect API, by a
tag per tool and case), detection lag (from the run's real end, ``finished_at`` or the cancel, to the moment the
flow returned or raised), the time from the terminal poll to that moment, peak RSS of the worker.

Run it in the ``compare`` venv (the main environment has no prefect-dbt)::

    python3 -m venv /tmp/compare-venv && /tmp/compare-venv/bin/pip install -e '.[compare]'
    /tmp/compare-venv/bin/python -m bench.compare --quick        # ~5 min: 60s x2, no-history, cancel, error x1
    /tmp/compare-venv/bin/python -m bench.compare                # ~22 min: adds the 20 min job, more cycles
    /tmp/compare-venv/bin/python -m bench.compare --cycles 3 --cases 60s,cancel
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN = "compare-bench-token"
ACCOUNT = 4242
TOOLS = ("ours", "theirs")
QUEUE_SECONDS = 2.0
START_SECONDS = 3.0


@dataclass(frozen=True)
class Case:
    """One emulator job shape, run by both tools."""

    name: str
    mean_seconds: float
    history: bool = True
    cv: float = 0.1
    outcome: str = "success"
    run_seconds: float | None = None  # a fixed run time (the early Error), else drawn around the mean
    cancel_after: float | None = None  # cancel from outside this long after the run started
    full_cycles: int = 5
    quick_cycles: int = 1
    theirs_max_wait: int | None = None  # None: prefect-dbt's default


CASES = [
    Case("60s", 60.0, full_cycles=5, quick_cycles=2),
    Case("20min", 1200.0, full_cycles=1, quick_cycles=0, theirs_max_wait=1800),
    Case("no-history", 60.0, history=False, full_cycles=3),
    Case("cancel", 60.0, cancel_after=15.0, full_cycles=3),
    Case("error", 60.0, outcome="error", run_seconds=8.0, full_cycles=3),
    # Successes outside the history's band: 40 s and 90 s runs of a job whose 20 past runs took ~60 s.
    Case("before-band", 60.0, run_seconds=40.0, full_cycles=3),
    Case("after-band", 60.0, run_seconds=90.0, full_cycles=3),
]


def job_id(case_index: int, tool: str) -> int:
    """The emulator job of one (case, tool): each tool has its own, with the same spec."""
    return 1000 + 10 * case_index + (1 if tool == "ours" else 2)


def draws(case: Case, count: int, seed: int) -> list[float]:
    """``count`` run times from a log-normal with the case's mean and CV (the same for both tools)."""
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1 + case.cv**2))
    mu = math.log(case.mean_seconds) - sigma**2 / 2
    return [rng.lognormvariate(mu, sigma) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Worker: one tool, one case, N sequential flow calls; prints one JSON line.


def _worker(tool: str, case: Case, job: int, cycles: int, base_url: str, domain: str) -> dict[str, Any]:
    from prefect import tags

    out: list[dict[str, Any]] = []
    tag = f"cmp-{tool}-{case.name}"
    if tool == "ours":
        from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
        from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job

        creds = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=base_url)
        for _ in range(cycles):
            start = time.time()
            error = None
            with tags(tag):
                try:
                    run_dbt_cloud_job(job, creds)
                except Exception as exc:
                    error = type(exc).__name__
            out.append({"start": start, "returned": time.time(), "error": error, "job": job})
    else:
        from prefect_dbt.cloud import DbtCloudCredentials as TheirCredentials
        from prefect_dbt.cloud.jobs import trigger_dbt_cloud_job_run_and_wait_for_completion

        their_creds = TheirCredentials(api_key=TOKEN, account_id=ACCOUNT, domain=domain)
        kwargs: dict[str, Any] = {}
        if case.theirs_max_wait is not None:
            kwargs["max_wait_seconds"] = case.theirs_max_wait
        for _ in range(cycles):
            start = time.time()
            error = None
            with tags(tag):
                try:
                    asyncio.run(
                        trigger_dbt_cloud_job_run_and_wait_for_completion(
                            dbt_cloud_credentials=their_creds, job_id=job, **kwargs
                        )
                    )
                except Exception as exc:
                    error = type(exc).__name__
            out.append({"start": start, "returned": time.time(), "error": error, "job": job})
    return {"tool": tool, "case": case.name, "cycles": out, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` would start from the parent's at fork and survive exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# Parent: emulator, relay, Prefect server, the run-time and cancel driver, workers, the table.


class Driver:
    """Gives each new run of a bench job its drawn run time, and cancels runs of the cancel case from outside."""

    def __init__(self, emulator: Any, plans: dict[int, tuple[Case, list[float]]]) -> None:
        self.emulator = emulator
        self.plans = plans
        self._seen: dict[int, int] = {}
        self._cancelled: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-driver", daemon=True)

    def start(self) -> None:
        """Set every job's first run time, then watch in a thread."""
        for job, (case, times) in self.plans.items():
            if case.run_seconds is None and times:
                self.emulator.set_job(job, run_seconds=times[0])
            self._seen[job] = len([r for r in self.emulator.runs_of(job) if not r.cause.startswith("History")])
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            now = time.time()
            for job, (case, times) in self.plans.items():
                runs = [r for r in self.emulator.runs_of(job) if not r.cause.startswith("History")]
                if len(runs) != self._seen[job]:
                    self._seen[job] = len(runs)
                    if case.run_seconds is None:  # the next run gets the next draw
                        self.emulator.set_job(job, run_seconds=times[len(runs) % len(times)])
                if case.cancel_after is not None:
                    for run in runs:
                        if (
                            run.id not in self._cancelled
                            and run.started
                            and now >= run.started + case.cancel_after
                            and run.cancelled_at is None
                            and now < run.finished
                        ):
                            self._cancelled.add(run.id)
                            self.emulator.cancel(run.id)


_RUN_PATH = re.compile(r"/api/v2/accounts/\d+/runs/(\d+)/?(.*)$")
_JOB_PATH = re.compile(r"/api/v2/accounts/\d+/jobs/(\d+)/?(.*)$")


def _job_of_request(emulator: Any, req: Any) -> int | None:
    if m := _RUN_PATH.match(req.path):
        run = emulator.runs.get(int(m.group(1)))
        return int(run.job_id) if run is not None else None
    if m := _JOB_PATH.match(req.path):
        return int(m.group(1))
    for key in ("job_definition_id", "job_definition_id__in"):
        if req.query.get(key):
            try:
                return int(str(req.query[key][0]).strip("[]").split(",")[0])
            except ValueError:
                return None
    return None


def _kind(req: Any) -> str:
    """trigger, run-read, or the request's short name (for the "others" split)."""
    if req.method == "POST" and (m := _JOB_PATH.match(req.path)) and m.group(2).rstrip("/") == "run":
        return "trigger"
    if req.method == "POST" and (m := _RUN_PATH.match(req.path)) and m.group(2).rstrip("/") == "retry":
        return "trigger"
    if req.method == "GET" and (m := _RUN_PATH.match(req.path)) and m.group(2) == "":
        return "run-read"
    if (m := _RUN_PATH.match(req.path)) and m.group(2):
        return "artifact-list" if m.group(2).rstrip("/") == "artifacts" else "artifact"
    if req.method == "GET" and (m := _JOB_PATH.match(req.path)) and m.group(2) == "":
        return "job-read"
    if req.method == "GET" and re.search(r"/runs/?$", req.path):
        return "list-runs"
    return f"{req.method} {req.path}"


@dataclass
class CycleFigures:
    """One flow call's measurements."""

    requests: int = 0
    triggers: int = 0
    polls: int = 0
    others: dict[str, int] = field(default_factory=dict)
    lag: float | None = None
    after_terminal_poll: float | None = None
    seen: float | None = None  # from the run's end to the poll that saw it
    runs_started: int = 0
    status: str = ""
    error: str | None = None


def analyse(emulator: Any, result: dict[str, Any], job: int) -> list[CycleFigures]:
    """Attribute the job's requests and runs to each flow call, by time window."""
    reqs = [r for r in emulator.requests if not r.path.startswith("/_emulator") and _job_of_request(emulator, r) == job]
    runs = [r for r in emulator.runs_of(job) if not r.cause.startswith("History")]
    figures = []
    starts = [*(c["start"] for c in result["cycles"][1:]), math.inf]
    for cycle, next_start in zip(result["cycles"], starts, strict=True):
        lo, hi = cycle["start"], min(cycle["returned"] + 0.5, next_start)
        fig = CycleFigures(error=cycle["error"])
        mine = [r for r in runs if lo <= r.created <= hi]
        fig.runs_started = len(mine)
        primary = mine[0] if mine else None
        terminal_seen: dict[int, bool] = {}
        first_terminal_poll: float | None = None
        for req in (r for r in reqs if lo <= r.at <= hi):
            fig.requests += 1
            kind = _kind(req)
            if kind == "trigger":
                fig.triggers += 1
                continue
            if kind == "run-read":
                m = _RUN_PATH.match(req.path)
                run = emulator.runs.get(int(m.group(1))) if m else None
                if run is not None and not terminal_seen.get(run.id):
                    fig.polls += 1
                    if req.at >= run.end():
                        terminal_seen[run.id] = True
                        if run is primary and first_terminal_poll is None:
                            first_terminal_poll = req.at
                    continue
                kind = "re-read after terminal poll"
            fig.others[kind] = fig.others.get(kind, 0) + 1
        if primary is not None:
            fig.status = primary.status_at(time.time()).name.lower()
            fig.lag = cycle["returned"] - primary.end()
            if first_terminal_poll is not None:
                fig.after_terminal_poll = cycle["returned"] - first_terminal_poll
                fig.seen = first_terminal_poll - primary.end()
        figures.append(fig)
    return figures


def count_task_runs(tag: str) -> int:
    """Prefect task runs carrying ``tag`` (every task run of that tool's flow calls of that case)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    total, offset = 0, 0
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag])), limit=200, offset=offset
            )
            total += len(page)
            offset += len(page)
            if len(page) < 200:
                return total


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


@contextmanager
def _prefect_server() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


def run_worker(tool: str, args: list[str], api_url: str, ca_file: str) -> dict[str, Any]:
    """Run a bench worker (``python -m bench.<module> --worker ...``) for ``tool`` against the Prefect API
    ``api_url`` (prefect-dbt trusting the relay's CA), with no dbt Cloud settings of this shell; its JSON line."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    for name in ("DBT_CLOUD_ACCOUNT_ID", "DBT_CLOUD_API_TOKEN", "DBT_CLOUD_ACCESS_URL", "DBT_CLOUD_CREDENTIALS_BLOCK"):
        env.pop(name, None)
    if tool == "theirs":
        env["SSL_CERT_FILE"] = ca_file
    command = [sys.executable, "-m", *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(args[:4])} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def _spawn(tool: str, case: Case, job: int, cycles: int, urls: dict[str, str], ca_file: str) -> dict[str, Any]:
    args = ["bench.compare", "--worker", tool, case.name, str(job), str(cycles), urls["http"], urls["domain"]]
    return run_worker(tool, args, urls["api"], ca_file)


Plan = list[tuple[int, Case, int]]  # (case index, case, cycles)


@dataclass
class Measured:
    """What one bench run left: the emulator (its request log and runs), each worker's result, the task runs."""

    emulator: Any
    results: dict[tuple[str, str], dict[str, Any]]
    task_runs: dict[tuple[str, str], int]
    started: float
    wall: float
    load: tuple[tuple[float, float, float], tuple[float, float, float]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="~5 min: no 20 min job, 1-2 cycles per case")
    parser.add_argument("--cycles", type=int, help="flow calls per tool and case (the 20 min job: 1)")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(c.name for c in CASES)}")
    parser.add_argument("--parallel", type=int, default=2, help="cases run at once (each is 2 workers)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    return parser


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The cases asked for, each with its number of cycles (a case of 0 cycles is left out)."""
    if args.cycles is not None and args.cycles < 1:
        parser.error("--cycles must be at least 1")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    selected = CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.name for c in CASES}
        if unknown:
            parser.error(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in CASES]}")
        selected = [c for c in CASES if c.name in wanted]
    plan: Plan = []
    for index, case in enumerate(CASES):
        if case not in selected:
            continue
        cycles = case.quick_cycles if args.quick else case.full_cycles
        if args.cycles is not None and case.name != "20min":  # the 20 min job: once in full mode, never in quick
            cycles = args.cycles
        if cycles > 0:
            plan.append((index, case, cycles))
    return plan


def _job_specs(plan: Plan, seed: int) -> tuple[list[Any], dict[int, tuple[Case, list[float]]]]:
    """One emulator job per (case, tool), alike for both tools, and the run times the driver hands out."""
    from dbt_cloud_gate.dbtcloud_api.emulator import JobSpec

    jobs: list[JobSpec] = []
    driver_plans: dict[int, tuple[Case, list[float]]] = {}
    for index, case, cycles in plan:
        history = draws(case, 20, seed + 1000 + index) if case.history else []
        times = draws(case, cycles + 8, seed + index)
        for tool in TOOLS:
            spec = JobSpec(
                id=job_id(index, tool),
                name=f"bench {case.name} ({tool})",
                queue_seconds=QUEUE_SECONDS,
                start_seconds=START_SECONDS,
                run_seconds=case.run_seconds if case.run_seconds is not None else times[0],
                outcome=case.outcome,  # type: ignore[arg-type]
                failing_model="orders" if case.outcome == "error" else None,
                history_seconds=history,
            )
            jobs.append(spec)
            driver_plans[spec.id] = (case, times)
    return jobs, driver_plans


def _measure(plan: Plan, seed: int, parallel: int) -> Measured:
    """Start the emulator, the TLS relay and a Prefect server; run every (case, tool) in its own worker."""
    from bench.tls_relay import TlsRelay
    from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer
    from dbt_cloud_gate.dbtcloud_api.openapi import load_default_validator

    jobs, driver_plans = _job_specs(plan, seed)
    load_before = os.getloadavg()
    started = time.time()
    emulator = Emulator(jobs, account_id=ACCOUNT, token=TOKEN, validator=load_default_validator())
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dcg-compare-home-") as home:
        os.environ["PREFECT_HOME"] = home
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with EmulatorServer(emulator) as server, TlsRelay(server.port) as relay, _prefect_server() as api:
            urls = {"api": api, "http": server.url, "domain": relay.domain}
            driver = Driver(emulator, driver_plans)
            driver.start()
            print(
                f"emulator {server.url}, TLS relay https://{relay.domain}, Prefect API {api}; "
                f"{sum(c for _, _, c in plan)} cycles per tool over {len(plan)} case(s)",
                flush=True,
            )

            def run_case(item: tuple[int, Case, int]) -> None:
                index, case, cycles = item
                with ThreadPoolExecutor(max_workers=2) as pool:
                    futures = {
                        tool: pool.submit(_spawn, tool, case, job_id(index, tool), cycles, urls, str(relay.ca_file))
                        for tool in TOOLS
                    }
                    for tool, future in futures.items():
                        results[(tool, case.name)] = future.result()
                print(f"  done: {case.name} ({cycles} cycle(s)) at {time.time() - started:.0f} s", flush=True)

            # The longest case first, so that the short ones share the time it takes.
            ordered = sorted(plan, key=lambda item: -item[1].mean_seconds * item[2])
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                for future in [pool.submit(run_case, item) for item in ordered]:
                    future.result()
            driver.stop()
            task_runs = {key: count_task_runs(f"cmp-{key[0]}-{key[1]}") for key in results}
    load_after = os.getloadavg()
    return Measured(emulator, results, task_runs, started, time.time() - started, (load_before, load_after))


def _row(measured: Measured, index: int, case: Case, tool: str) -> dict[str, Any]:
    """One (case, tool)'s figures per flow call."""
    result = measured.results[(tool, case.name)]
    figs = analyse(measured.emulator, result, job_id(index, tool))
    n = len(figs)
    lags = [f.lag for f in figs if f.lag is not None]
    after = [f.after_terminal_poll for f in figs if f.after_terminal_poll is not None]
    seen = [f.seen for f in figs if f.seen is not None]
    others: dict[str, int] = {}
    for f in figs:
        for k, v in f.others.items():
            others[k] = others.get(k, 0) + v
    return {
        "case": case.name,
        "tool": tool,
        "cycles": n,
        "requests": sum(f.requests for f in figs) / n,
        "triggers": sum(f.triggers for f in figs) / n,
        "polls": sum(f.polls for f in figs) / n,
        "others": sum(others.values()) / n,
        "others_by_kind": {k: v / n for k, v in sorted(others.items())},
        "task_runs": measured.task_runs[(tool, case.name)] / n,
        "lag_p50": _quantile(lags, 0.5),
        "lag_p95": _quantile(lags, 0.95),
        "lags": lags,
        "after_terminal_poll_p50": _quantile(after, 0.5),
        "seen_p50": _quantile(seen, 0.5),
        "seen_max": max(seen) if seen else None,
        "runs_started": sum(f.runs_started for f in figs) / n,
        "outcomes": sorted({f"{f.status}/{f.error or 'returned'}" for f in figs}),
        "peak_rss_mb": result["peak_rss_mb"],
    }


def _print_table(plan: Plan, rows: list[dict[str, Any]], measured: Measured) -> None:
    """The side-by-side table, then the other requests and the lags of every cycle."""
    (load_before, load_after), started = measured.load, measured.started
    print()
    print(
        f"dbt-cloud-gate run_dbt_cloud_job vs prefect-dbt 0.7.25 trigger_dbt_cloud_job_run_and_wait_for_completion, "
        f"default settings; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"wall {measured.wall / 60:.1f} min, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    header = (
        "| case | tool | cycles | requests/run (trigger + polls + others) | task runs/run | lag p50 / p95 | "
        "terminal poll after end p50 / max | return after terminal poll p50 | dbt runs/call | peak RSS | outcome |"
    )
    print(header)
    print("| --- | --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | --- |")
    by_key = {(r["case"], r["tool"]): r for r in rows}
    for _index, case, _cycles in plan:
        for tool in TOOLS:
            r = by_key[(case.name, tool)]
            print(
                f"| {case.name} | {tool} | {r['cycles']} | {r['requests']:.1f} ({r['triggers']:.1f} + {r['polls']:.1f} + "
                f"{r['others']:.1f}) | {r['task_runs']:.1f} | {_fmt(r['lag_p50'])} / {_fmt(r['lag_p95'], ' s')} | "
                f"{_fmt(r['seen_p50'])} / {_fmt(r['seen_max'], ' s')} | {_fmt(r['after_terminal_poll_p50'], ' s', 2)} | {r['runs_started']:.1f} | {r['peak_rss_mb']:.1f} MB | "
                f"{', '.join(r['outcomes'])} |"
            )
        ours, theirs = by_key[(case.name, "ours")], by_key[(case.name, "theirs")]
        print(
            f"| {case.name} | ours/theirs | | {_ratio(ours['requests'], theirs['requests'])} | "
            f"{_ratio(ours['task_runs'], theirs['task_runs'])} | {_ratio(ours['lag_p50'], theirs['lag_p50'])} / "
            f"{_ratio(ours['lag_p95'], theirs['lag_p95'])} | | | | {_ratio(ours['peak_rss_mb'], theirs['peak_rss_mb'])} | |"
        )
    print()
    print("Other requests per run, by kind:")
    for r in rows:
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["others_by_kind"].items()) or "none"
        print(f"  {r['case']:<11} {r['tool']:<7} {kinds}")
    print("Lags (s) per cycle:")
    for r in rows:
        print(f"  {r['case']:<11} {r['tool']:<7} {', '.join(f'{v:.1f}' for v in r['lags'])}")


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run both tools on every case, print the table."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        tool, case_name, job, cycles, http_url, domain = args.worker
        case = next(c for c in CASES if c.name == case_name)
        print(json.dumps(_worker(tool, case, int(job), int(cycles), http_url, domain)), flush=True)
        return 0
    try:
        import prefect_dbt  # noqa: F401
    except ImportError:
        print("prefect-dbt is not installed here: pip install -e '.[compare]' (in a separate venv).", file=sys.stderr)
        return 2
    plan = _plan(parser, args)
    measured = _measure(plan, args.seed, args.parallel)
    rows = [_row(measured, index, case, tool) for index, case, _cycles in plan for tool in TOOLS]
    _print_table(plan, rows, measured)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "wall": measured.wall, "load": list(measured.load)}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
