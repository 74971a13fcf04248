import logging

from suite.ray_local import PG_CLEANER_LOGGER, loopback_worker_setup


def test_a_local_workers_state_api_warning_is_dropped_and_its_other_warnings_kept():
    """A local Ray has no dashboard, so Ray Train's placement-group cleaner cannot reach the state
    API and warns every second; the worker setup drops exactly that warning. Mutation caught (seen
    failing): the filter not installed by `loopback_worker_setup`."""
    loopback_worker_setup()
    log, seen = logging.getLogger(PG_CLEANER_LOGGER), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)  # Ray's loggers do not propagate to the root (caplog's)
    try:
        log.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.")
        log.warning("Controller actor died; removing placement group pg-1")
    finally:
        log.removeHandler(handler)
    assert seen == ["Controller actor died; removing placement group pg-1"]
