"""Parsing of real captured responses and of the edge cases of the models."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbt_cloud_gate.dbtcloud_api import Job, Run, RunStatus, parse_run_results, parse_timestamp
from dbt_cloud_gate.dbtcloud_api.models import RunStep, format_timestamp, merge_run_results
from tests.conftest import FIXTURES


def _data(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())["data"]


def test_every_fixture_is_parsed() -> None:
    files = sorted(FIXTURES.glob("*.json"))
    assert len(files) >= 6
    for path in files:
        data = json.loads(path.read_text())["data"]
        if path.name.startswith(("run_get", "job_run", "run_cancel")):
            run = Run.model_validate(data)
            assert run.id == data["id"] and run.account_id == data["account_id"]
            assert run.is_terminal
        elif path.name.startswith("job_get"):
            job = Job.model_validate(data)
            assert job.id == data["id"] and job.schedule_enabled is data["triggers"]["schedule"]
        elif path.name.startswith("run_list_artifacts"):
            assert "run_results.json" in data
        elif path.name.startswith("project_list"):
            assert data[0]["name"] == "jaffle_shop"
        else:  # pragma: no cover - a new fixture must get a branch here
            pytest.fail(f"no parser test for {path.name}")


def test_run_timestamps_exact_to_microsecond() -> None:
    run = Run.model_validate(_data("run_get_response.json"))
    assert run.finished_at == datetime(2021, 12, 7, 10, 34, 14, 435474, tzinfo=UTC)
    assert run.started_at == datetime(2021, 12, 7, 10, 34, 1, 982824, tzinfo=UTC)
    assert run.finished_at is not None and run.finished_at.utcoffset() == timedelta(0)
    assert run.status is RunStatus.SUCCESS and run.status_label == "Success"
    assert run.last_checked_at is None if hasattr(run, "last_checked_at") else True


def test_cancelled_fixture_is_a_failure_status() -> None:
    run = Run.model_validate(_data("run_cancel_response.json"))
    assert run.status is RunStatus.CANCELLED
    assert run.started_at is None and run.git_branch is None
    assert run.is_terminal and run.known_status is RunStatus.CANCELLED


def test_job_fixture_uses_t_separator_and_schedule_flag() -> None:
    job = Job.model_validate(_data("job_get_response.json"))
    assert job.created_at == datetime(2021, 11, 18, 15, 19, 3, 185668, tzinfo=UTC)
    assert job.schedule_enabled is False
    assert job.dbt_version is None


def test_timestamp_offsets_are_converted_to_utc_exactly() -> None:
    parsed = parse_timestamp("2021-12-07 12:34:14.000001+02:00")
    assert parsed == datetime(2021, 12, 7, 10, 34, 14, 1, tzinfo=UTC)
    assert parsed is not None and parsed.tzinfo == UTC
    assert parse_timestamp("2021-12-07T10:34:14Z") == datetime(2021, 12, 7, 10, 34, 14, tzinfo=UTC)
    assert parse_timestamp("2021-12-07 10:34:14") == datetime(2021, 12, 7, 10, 34, 14, tzinfo=UTC)
    assert parse_timestamp(None) is None and parse_timestamp("") is None
    with pytest.raises(ValueError, match="not a dbt Cloud timestamp"):
        parse_timestamp("yesterday")
    other = datetime(2024, 1, 1, 1, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_timestamp(other) == "2024-01-01 00:00:00.123456+00:00"
    assert parse_timestamp(format_timestamp(other)) == other


def test_unknown_status_is_not_terminal_unless_complete() -> None:
    base = dict(_data("run_get_response.json"))  # type: ignore[call-overload]
    running = Run.model_validate({**base, "status": 42, "is_complete": False})
    assert running.status == 42 and running.known_status is None
    assert not running.is_terminal
    assert running.status_label in ("Success", "Unknown (42)")
    done = Run.model_validate({**base, "status": 42, "is_complete": True})
    assert done.is_terminal
    unknown_no_flag = Run.model_validate({**base, "status": "7", "is_complete": None, "status_humanized": None})
    assert unknown_no_flag.status == 7 and not unknown_no_flag.is_terminal
    assert unknown_no_flag.status_label == "Unknown (7)"


def test_null_fields_are_optional() -> None:
    base = dict(_data("run_get_response.json"))  # type: ignore[call-overload]
    nulls = {key: None for key in base if key not in ("id", "account_id", "status")}
    run = Run.model_validate({**base, **nulls})
    assert run.finished_at is None and run.run_steps == [] and run.job_id is None


def test_run_results_parsing() -> None:
    document = {
        "results": [
            {"unique_id": "model.shop.orders", "status": "error", "execution_time": 1.5, "message": "boom"},
            {"unique_id": "test.shop.not_null_orders_id", "status": "pass", "execution_time": 0.1, "message": None},
        ]
    }
    results = parse_run_results(document)
    assert [(r.name, r.resource_type, r.status) for r in results] == [
        ("orders", "model", "error"),
        ("not_null_orders_id", "test", "pass"),
    ]
    assert results[0].execution_time == 1.5 and results[0].message == "boom"
    assert parse_run_results({}) == []


def test_fixture_directory_exists() -> None:
    assert Path(FIXTURES).is_dir()


def test_versioned_model_takes_name_and_version_from_the_unique_id() -> None:
    results = parse_run_results(
        {
            "results": [
                {"unique_id": "model.shop.dim_customers.v2", "status": "success"},
                {"unique_id": "model.shop.dim_customers.v1", "status": "success"},
                {"unique_id": "model.shop.orders", "status": "success"},
                {"unique_id": "test.shop.not_null_orders_id.5f3a1b2c9d", "status": "pass"},
                {"unique_id": "source.shop.raw.orders", "status": "pass"},
            ]
        }
    )
    identity = [(r.name, r.version, r.resource_type, r.package) for r in results]
    assert identity == [
        ("dim_customers", "2", "model", "shop"),
        ("dim_customers", "1", "model", "shop"),
        ("orders", None, "model", "shop"),
        ("not_null_orders_id", None, "test", "shop"),
        ("orders", None, "source", "shop"),
    ]
    v2, v1, orders = results[0], results[1], results[2]
    assert v2.label == "dim_customers.v2" and orders.label == "orders"
    # The one matching rule a source_model reference goes through.
    assert v2.matches("dim_customers.v2") and v2.matches("model.shop.dim_customers.v2") and v2.matches("dim_customers")
    assert not v2.matches("dim_customers.v1") and v1.matches("dim_customers.v1") and not v2.matches("v2")
    assert orders.matches("orders") and not orders.matches("orders.v1") and not orders.matches("dim_customers")


def test_node_fields_win_over_the_unique_id() -> None:
    entry = {
        "unique_id": "model.shop.dim_customers.v2",
        "status": "success",
        "node": {"name": "dim_customers", "package_name": "shop", "resource_type": "model", "version": 2},
    }
    [result] = parse_run_results({"results": [entry, "not a result"]})
    assert (result.name, result.version) == ("dim_customers", "2")
    [top] = parse_run_results({"results": [{"unique_id": "model.shop.x", "name": "y", "version": "v3"}]})
    assert (top.name, top.version) == ("y", "3")


def test_step_commands_say_which_steps_can_build_models() -> None:
    names = {
        "Clone git repository": None,
        "Create profile from connection Snowflake": None,
        "Invoke dbt with `dbt deps`": "deps",
        "Invoke dbt with `dbt run --select tag:nightly`": "run",
        "Invoke dbt with `dbt --warn-error build`": "build",
        "Invoke dbt with `dbt source freshness`": "source freshness",
        "Invoke dbt with `dbt docs generate`": "docs generate",
        "Invoke dbt with `dbt test`": "test",
        "Invoke dbt with `dbt seed`": "seed",
        "Invoke dbt with `dbt snapshot`": "snapshot",
        "Invoke dbt with `dbt frobnicate`": "frobnicate",
    }
    steps = [RunStep(index=i, name=name, status=10) for i, name in enumerate(names, start=1)]
    assert [s.dbt_command for s in steps] == list(names.values())
    building = [s.name for s in steps if s.may_build_models]
    assert building == [
        "Invoke dbt with `dbt run --select tag:nightly`",
        "Invoke dbt with `dbt --warn-error build`",
        "Invoke dbt with `dbt seed`",
        "Invoke dbt with `dbt snapshot`",
        "Invoke dbt with `dbt frobnicate`",  # unknown: read it, it may have built something
    ]
    base = dict(_data("run_get_response.json"))  # type: ignore[call-overload]
    run = Run.model_validate({**base, "run_steps": [s.model_dump() for s in steps]})
    assert run.model_steps() == [4, 5, 9, 10, 11]
    # A step that never finished (cancelled, skipped) has nothing to read; unknown steps: the caller reads the last.
    cancelled = [s.model_copy(update={"status": 30}) if s.index == 9 else s for s in steps]
    assert Run.model_validate({**base, "run_steps": [s.model_dump() for s in cancelled]}).model_steps() == [
        4,
        5,
        10,
        11,
    ]
    assert Run.model_validate({**base, "run_steps": []}).model_steps() is None


def test_merged_results_keep_the_later_step() -> None:
    first = parse_run_results(
        {"results": [{"unique_id": "model.p.a", "status": "success"}, {"unique_id": "model.p.b", "status": "error"}]}
    )
    second = parse_run_results({"results": [{"unique_id": "model.p.b", "status": "success"}]})
    merged = merge_run_results([first, second])
    assert [(m.unique_id, m.status) for m in merged] == [("model.p.a", "success"), ("model.p.b", "success")]
