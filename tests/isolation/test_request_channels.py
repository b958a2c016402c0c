"""The channel to the front end, against a hostile request.

Under the reset engine a worker's request channels are persistent: every
request of that worker, and of every worker that replaces it, goes through
them. No request may change what a later one sees or sends through them.
Each case attacks the channel in one way, then checks that the requests
after it, one after another and side by side, are answered with their own
answers; where the change cannot be taken back (an option, a shutdown, a
closed or replaced fd) the worker is replaced. The fork engine keeps a
socketpair per request, and the same requests must leave nothing behind
there either.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.daemon_harness import IsolatedDaemon
from tests.isolation.test_escapes import attack


def replacements(daemon: IsolatedDaemon) -> int:
    count: int = daemon.status()["tenants"]["attacker"]["worker_replacements"]
    return count


def later_requests_get_their_own_answers(daemon: IsolatedDaemon, n: int = 12) -> None:
    """Sequential, then side by side: each answer is the program's own for it."""
    answers = [attack(daemon, "/normal") for _ in range(n)]
    with ThreadPoolExecutor(4) as pool:
        answers += list(pool.map(lambda _: attack(daemon, "/normal"), range(n)))
    for status, text in answers:
        assert status == 200 and text.startswith("ok "), (status, text)


def expect_replacement(daemon: IsolatedDaemon, before: int, path: str) -> None:
    if daemon.engine != "reset":
        return
    daemon.wait_for(lambda: replacements(daemon) > before, what=f"the worker's replacement after {path}")


@pytest.mark.parametrize("path", ["/channel/shutdown", "/channel/options", "/channel/scm-dup-touch"])
def test_a_change_to_the_channel_replaces_the_worker(isolated: IsolatedDaemon, path: str) -> None:
    """shutdown(), a socket option, and either through a duplicate made with
    SCM_RIGHTS: the request's own answer may be lost, its worker is not reused."""
    before = replacements(isolated)
    status, text = attack(isolated, path)
    assert status in (200, 502), (status, text)
    if status == 200:
        assert "ok" in text, text  # the call went through: only the replacement protects
    expect_replacement(isolated, before, path)
    later_requests_get_their_own_answers(isolated)


def test_a_packet_filter_on_the_channel_is_refused_or_replaces_the_worker(isolated: IsolatedDaemon) -> None:
    before = replacements(isolated)
    status, text = attack(isolated, "/channel/filter")
    assert status in (200, 502), (status, text)
    if "'ok'" in text:  # attached: the worker must go
        expect_replacement(isolated, before, "/channel/filter")
    later_requests_get_their_own_answers(isolated)


@pytest.mark.parametrize("path", ["/channel/close", "/channel/dup2"])
def test_closing_the_channel_or_dup2_over_it_replaces_the_worker(isolated: IsolatedDaemon, path: str) -> None:
    before = replacements(isolated)
    status, _ = attack(isolated, path)
    assert status == 502  # the answer had no channel to go on
    expect_replacement(isolated, before, path)
    later_requests_get_their_own_answers(isolated)


def test_frames_left_on_the_channel_reach_no_later_request(isolated: IsolatedDaemon) -> None:
    """Answers for the next request ids, a second answer of its own and
    garbage, left after an early answer: the client gets the first answer
    of its own id; what follows is discarded, not read as a later answer."""
    for _ in range(3):
        status, text = attack(isolated, "/channel/junk")
        if isolated.engine == "reset":
            assert (status, text) == (200, "early")
        else:
            assert status in (200, 502)  # its own socket: the first frames decide
        later_requests_get_their_own_answers(isolated, n=6)


def test_a_forged_completion_does_not_free_the_worker(isolated: IsolatedDaemon) -> None:
    """An answer written at once, then the request runs on for a second:
    no other request is given to that worker (or reads its late frames)
    until the host reports the rewind."""
    with ThreadPoolExecutor(5) as pool:
        forged = pool.submit(attack, isolated, "/channel/linger")
        others = [pool.submit(attack, isolated, "/normal") for _ in range(16)]
        status, text = forged.result()
        if isolated.engine == "reset":
            assert (status, text) == (200, "early")
        else:
            assert status in (200, 502), (status, text)
        for other in others:
            assert other.result()[0] == 200 and other.result()[1].startswith("ok "), other.result()
    later_requests_get_their_own_answers(isolated, n=6)


def test_a_duplicate_left_in_flight_changes_nothing(isolated: IsolatedDaemon) -> None:
    """The duplicate dies with the request's own socketpair, closed by the
    rewind; untouched, it costs no replacement."""
    before = replacements(isolated)
    status, text = attack(isolated, "/channel/scm-dup-keep")
    assert status == 200 and "duplicates" in text, (status, text)
    later_requests_get_their_own_answers(isolated)
    if isolated.engine == "reset":
        assert replacements(isolated) == before
