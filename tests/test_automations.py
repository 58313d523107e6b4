"""The crashed-run automation on a real Prefect server: installed once whatever the number of deploys, repaired
when changed or disabled, its copies removed, nothing else touched; and the watch tag passed on to subflows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import respx
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.actions import DoNothing
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flow_engine import run_flow
from prefect.runtime import flow_run as runtime_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

from dbt_cloud_gate.automations import (
    AUTOMATION_NAME,
    SILENCE_SECONDS,
    WATCH_TAG,
    WINDOW_VARIABLE,
    automation_problem,
    crash_automation,
    ensure_crash_automation,
    install_crash_automation,
    watched_subflows,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _ours() -> list[AutomationCore]:
    async with get_client() as client:
        return list(await client.read_automations_by_name(AUTOMATION_NAME))


async def _remove(name: str) -> None:
    async with get_client() as client:
        for found in await client.read_automations_by_name(name):
            await client.delete_automation(found.id)


async def _problem() -> tuple[str, str] | None:
    async with get_client() as client:
        return await automation_problem(client)


@pytest.fixture
def clean() -> Iterator[None]:
    run_coro_as_sync(_remove(AUTOMATION_NAME))
    yield
    run_coro_as_sync(_remove(AUTOMATION_NAME))


@pytest.mark.usefixtures("clean")
def test_the_build_step_installs_it_once_and_the_doctor_check_agrees() -> None:
    problem = run_coro_as_sync(_problem())
    assert problem is not None and "is missing" in problem[0] and "prefect deploy --all" in problem[1]
    assert install_crash_automation() == {"automation": "created"}
    assert install_crash_automation(any_step_input="ignored") == {"automation": "unchanged"}
    [saved] = run_coro_as_sync(_ours())
    assert saved.enabled
    trigger = saved.trigger
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
    assert trigger.within == timedelta(seconds=SILENCE_SECONDS) and trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {"prefect.flow-run.*"}  # any state change closes the window (a retry's AwaitingRetry)
    related = trigger.match_related if isinstance(trigger.match_related, list) else [trigger.match_related]
    tag = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{WATCH_TAG}"}
    assert [spec.model_dump() for spec in related] == [tag]
    assert run_coro_as_sync(_problem()) is None


@pytest.mark.usefixtures("clean")
def test_a_workspace_chooses_its_window_and_a_wrong_one_is_refused_before_the_server_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WINDOW_VARIABLE, "120")
    assert install_crash_automation() == {"automation": "created"}
    [saved] = run_coro_as_sync(_ours())
    assert saved.trigger.within == timedelta(seconds=120)  # type: ignore[union-attr]
    assert "No heartbeat for 120 s" in (saved.actions[0].message or "")  # type: ignore[union-attr]
    assert run_coro_as_sync(_problem()) is None  # the doctor reads the same setting
    monkeypatch.delenv(WINDOW_VARIABLE)
    problem = run_coro_as_sync(_problem())
    assert problem is not None and "differs" in problem[0]  # the default is 240 s: the saved one is not it
    for wrong in ("89", "soon", "nan", "inf", "-300"):
        monkeypatch.setenv(WINDOW_VARIABLE, wrong)
        with pytest.raises(ValueError, match=f"{WINDOW_VARIABLE}=.* at least 90 .*or unset it"):
            install_crash_automation()
        problem = run_coro_as_sync(_problem())
        assert problem is not None and WINDOW_VARIABLE in problem[0] and "unset" in problem[1]
    [unchanged] = run_coro_as_sync(_ours())
    assert unchanged.trigger.within == timedelta(seconds=120)  # type: ignore[union-attr]


@pytest.mark.usefixtures("clean")
def test_a_changed_or_disabled_automation_is_repaired_and_copies_go_but_other_automations_stay() -> None:
    async def scenario() -> tuple[list[str], tuple[str, str] | None, tuple[str, str] | None]:
        async with get_client() as client:
            # Someone's own automation, and two copies of ours, one of them loosened by hand.
            theirs = await client.create_automation(
                AutomationCore(
                    name="their own",
                    trigger=EventTrigger(expect={"x.y"}, posture=Posture.Reactive, threshold=1),
                    actions=[DoNothing()],
                )
            )
            await client.create_automation(crash_automation(silence_seconds=600))
            changed = await automation_problem(client)
            await client.create_automation(crash_automation(silence_seconds=900))
            done = [await ensure_crash_automation(client)]
            [first] = await client.read_automations_by_name(AUTOMATION_NAME)
            await client.pause_automation(first.id)
            disabled = await automation_problem(client)
            # Disabled by an operator: a deploy brings its definition up to date but leaves it disabled.
            await client.update_automation(
                first.id, crash_automation(silence_seconds=60).model_copy(update={"enabled": False})
            )
            done.append(await ensure_crash_automation(client))
            [kept] = await client.read_automations_by_name(AUTOMATION_NAME)
            assert kept.id == first.id and not kept.enabled
            assert await ensure_crash_automation(client) == "disabled"
            await client.resume_automation(first.id)
            assert kept.trigger.within == timedelta(seconds=SILENCE_SECONDS)  # type: ignore[union-attr]
            assert [a.id for a in await client.read_automations_by_name("their own")] == [theirs]
            await client.delete_automation(theirs)
            return done, changed, disabled

    done, changed, disabled = run_coro_as_sync(scenario())
    assert done == ["updated", "disabled"]
    assert changed is not None and "differs" in changed[0]
    assert disabled is not None and "disabled" in disabled[0] and "enable it" in disabled[1]
    assert run_coro_as_sync(_problem()) is None


@flow
def _child() -> list[str]:
    return list(runtime_flow_run.tags)


@flow
def _parent() -> list[str]:
    with watched_subflows():
        return _child()


def test_a_watched_flow_run_passes_the_tag_to_its_subflows_and_an_unwatched_one_does_not() -> None:
    with get_client(sync_client=True) as client:
        watched = client.create_flow_run(_parent, tags=[WATCH_TAG, "nightly"])
        plain = client.create_flow_run(_parent, tags=["nightly"])
    # A deployment's tags reach the flow run, not its subflows: only the watch tag is passed on.
    assert run_flow(_parent, flow_run=watched) == [WATCH_TAG]
    assert run_flow(_parent, flow_run=plain) == []


@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_server_that_refuses_automations_warns_and_the_deploy_goes_on_but_other_errors_raise(status: int) -> None:
    # A deploy token without the right to manage automations: a real Prefect server cannot answer so (no auth in
    # Prefect's open-source server), hence respx. 404 on the CSRF token: a server without CSRF protection.
    api = "http://prefect.invalid/api"
    with temporary_settings({PREFECT_API_URL: api}), respx.mock(assert_all_called=False) as mock:
        mock.get(f"{api}/csrf-token").respond(404, json={})
        mock.post(f"{api}/automations/filter").respond(status, json={"detail": "no"})
        if status == 500:
            with pytest.raises(PrefectHTTPStatusError):
                install_crash_automation()
        else:
            assert install_crash_automation() == {"automation": f"not installed (the server answered {status})"}
        assert [call.request.url.path for call in mock.calls][-1] == "/api/automations/filter"
