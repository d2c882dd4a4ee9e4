"""`job_lookup.choose`: which of a task's queued jobs a dispatch takes, and where its cursor goes
(orchestra/db/job_lookup.py). Candidates are (job id, index, fresh): at most n fresh ones from the
cursor on and at most n retried ones, each part in index order."""
from __future__ import annotations

from orchestra.db.job_lookup import choose


def test_fresh_jobs_only_move_the_cursor_past_the_last_one_taken() -> None:
    c = choose([(10, 4, True), (11, 5, True)], 2, 4, 100)
    assert (c.ids, c.next_from) == ([10, 11], 6)


def test_a_retry_takes_its_place_by_index_and_the_cursor_stops_at_the_next_fresh_one() -> None:
    c = choose([(10, 4, True), (11, 5, True), (7, 1, False)], 2, 4, 100)
    assert (c.ids, c.next_from) == ([7, 10], 5)
    c = choose([(10, 4, True), (7, 1, False), (8, 2, False)], 1, 4, 100)
    assert (c.ids, c.next_from) == ([7], 4)  # the first fresh one seen, not taken


def test_no_fresh_job_left_moves_the_cursor_past_the_task() -> None:
    c = choose([(7, 1, False)], 1, 40, 100)
    assert (c.ids, c.next_from) == ([7], 100)


def test_fewer_than_asked_sends_the_next_read_to_the_first_job() -> None:
    c = choose([(10, 50, True)], 3, 40, 100)  # n_queued promised 3: some fresh job sits below 40
    assert (c.ids, c.next_from) == ([10], 0)
    c = choose([(10, 50, True)], 3, 0, 100)  # read from the first job already: nothing more to find
    assert (c.ids, c.next_from) == ([10], 51)
    assert choose([], 2, 0, 5).next_from == 5 and choose([], 2, 3, 5).next_from == 0
