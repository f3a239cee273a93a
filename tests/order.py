"""The heaviest test files first, so that two xdist workers finish together.

`--dist loadfile` hands out whole files in collection order (`--no-loadscope-reorder`: xdist's own
order is by number of tests, which put the two-test DAG file, the suite's longest, near the end,
where one worker ran it while the other sat idle). A file's weight is its seconds in this stack's
last whole run of it (setup, call and teardown of its tests, kept in pytest's cache by the
controller: the Connect tests are the longest on Spark 4 and skipped on 3.5); a file the cache does
not know yet (a fresh clone) weighs a minute per slow-marked test. Only the order changes.
"""

import pytest

UNKNOWN_SLOW_TEST_S = 60.0


def _key() -> str:
    from pipeline.session import stack

    return f"sparkgan/file_seconds_{stack()}"


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def heaviest_first(config, items) -> None:
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider (make mutation)
    known = cache.get(_key(), {}) if cache is not None else {}
    guess: dict[str, float] = {}
    for item in items:
        guess.setdefault(_file(item.nodeid), 0.0)
        if item.get_closest_marker("slow"):
            guess[_file(item.nodeid)] += UNKNOWN_SLOW_TEST_S
    weight = {f: known.get(f, g) for f, g in guess.items()}
    first_seen = {f: i for i, f in enumerate(guess)}
    items.sort(key=lambda item: (-weight[_file(item.nodeid)], first_seen[_file(item.nodeid)]))


def pytest_deselected(items):
    """A file some of whose tests -m or -k left out: its seconds are not its whole cost."""
    if items:
        partial = items[0].config.__dict__.setdefault("_sparkgan_partial", set())
        partial.update(_file(item.nodeid) for item in items)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):  # an xdist worker hands them to the controller
        session.config.workeroutput["sparkgan_partial"] = sorted(getattr(session.config, "_sparkgan_partial", ()))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    partial = node.config.__dict__.setdefault("_sparkgan_partial", set())
    partial.update(getattr(node, "workeroutput", {}).get("sparkgan_partial", ()))


def pytest_terminal_summary(terminalreporter, config):
    cache = getattr(config, "cache", None)
    if cache is None or hasattr(config, "workerinput"):
        return
    seconds = dict(cache.get(_key(), {}))
    partial = getattr(config, "_sparkgan_partial", set())
    ran: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) in ("setup", "call", "teardown") and hasattr(rep, "duration"):
                ran[_file(rep.nodeid)] = ran.get(_file(rep.nodeid), 0.0) + rep.duration
    seconds.update({f: round(s, 1) for f, s in ran.items() if f not in partial})
    cache.set(_key(), seconds)
