"""``retry_if_transient`` on Prefect's own engine: a sync task of our async flows, called from a script (the flow
runs on a loop of its own, as ``run_dbt_cloud_job`` does), is retried on a transient dbt Cloud error and not on a
refused token."""

from __future__ import annotations

import pytest
from prefect import task

from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudAuthError, DbtCloudError, DbtCloudServerError
from dbt_cloud_gate.starting import retry_if_transient
from dbt_cloud_gate.sync_flow import sync_callable_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (DbtCloudServerError("dbt Cloud answered 502", status_code=502), 2),
        (DbtCloudAuthError("dbt Cloud answered 401: the token is refused", status_code=401), 1),
    ],
    ids=["transient-retried", "refused-not-retried"],
)
def test_a_task_of_an_async_flow_is_retried_only_on_a_transient_error(error: DbtCloudError, attempts: int) -> None:
    calls: list[int] = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_if_transient, persist_result=False)
    def flaky() -> str:
        calls.append(len(calls))
        if len(calls) == 1:
            raise error
        return "done"

    @sync_callable_flow()
    async def parent() -> str:
        return flaky()

    state = parent(return_state=True)
    assert len(calls) == attempts
    assert state.is_completed() is (attempts == 2)
