"""PostgreSQL restarted under a running service: requests fail cleanly while it is down, then succeed.

The server restarted is the test's own (tests/throwaway_postgres.py), never the shared one.
"""

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from mdm.actor import Role, cli_actor
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.database import open_database
from tests.live_server import live_server
from tests.throwaway_postgres import ThrowawayPostgres, discard, start_throwaway_postgres

REQUEST_TIMEOUT = 15  # seconds: a request that takes longer than this counts as a hang


@pytest.fixture
def own_postgres() -> Iterator[ThrowawayPostgres]:
    server = start_throwaway_postgres()
    if server is None:
        if os.environ.get("MDM_REQUIRE_POSTGRES") == "1":
            pytest.fail("MDM_REQUIRE_POSTGRES=1 but PostgreSQL (initdb, pg_ctl) is not installed")
        pytest.skip("this test starts and stops a PostgreSQL of its own: initdb and pg_ctl are not installed here")
    yield server
    discard(server)


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None  # None: no answer (the request failed or timed out)
    content_type: str
    retry_after: str | None = None
    error: str | None = None


def _load(base_url: str, headers: dict[str, str], stop: threading.Event, outcomes: list[Outcome]) -> None:
    """Reads and writes, one after another, until told to stop."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                if n % 2:
                    response = client.get("/api/v1/devices")
                else:
                    person = {"external_id": f"{threading.get_ident()}-{n}", "kind": "learner", "display_name": "L"}
                    response = client.post("/api/v1/people", json=person)
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(started, time.monotonic(), None, "", error=f"{type(exc).__name__}: {exc}"))
                continue
            headers = response.headers
            outcomes.append(
                Outcome(
                    started,
                    time.monotonic(),
                    response.status_code,
                    headers.get("content-type", ""),
                    headers.get("retry-after"),
                )
            )
            time.sleep(0.02)


def test_service_answers_503_while_postgresql_is_down_and_recovers_when_it_is_back(own_postgres, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with live_server(data_dir, own_postgres.url) as server:
        database = open_database(own_postgres.url)
        with database.writing() as session:
            token = create_token(session, TokenCreate(name="load", role=Role.admin), cli_actor()).token
        database.dispose()
        headers = {"Authorization": f"Bearer {token}"}
        stop, outcomes = threading.Event(), []
        workers = [threading.Thread(target=_load, args=(server.url, headers, stop, outcomes)) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(1)
            stopping = time.monotonic()
            own_postgres.stop("fast")  # every session is ended, as in a restart or a failover
            went_down = time.monotonic()
            time.sleep(2)
            restarting = time.monotonic()
            own_postgres.start()
            came_back = time.monotonic()
            time.sleep(2)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=REQUEST_TIMEOUT + 5)
        assert not any(worker.is_alive() for worker in workers), "a request hung"
        before = [o for o in outcomes if o.finished < stopping]
        during = [o for o in outcomes if went_down + 0.5 < o.started < restarting]
        after = [o for o in outcomes if o.started > came_back]
        assert before, "no request before the outage"
        assert during, "no request during the outage"
        assert after, "no request after the outage"
        assert {o.status for o in before} <= {200, 201}
        # While it is down: a clean 503 problem, never a 500, a dropped connection or a hang.
        assert [o for o in outcomes if o.status is None] == []
        assert {o.status for o in outcomes} <= {200, 201, 503}
        assert {(o.status, o.content_type, o.retry_after) for o in during} == {(503, "application/problem+json", "5")}
        # Once it is back, every request succeeds: pooled connections that died are replaced.
        assert {o.status for o in after} <= {200, 201}
        assert httpx.get(f"{server.url}/readyz", timeout=REQUEST_TIMEOUT).status_code == 200
