"""The collector is paused for a call and comes back as it was, however calls overlap."""
import gc
import threading

from amips_plugin.core.gc_pause import PAUSE_FROM, gc_paused, paused_for


def test_the_collector_is_off_inside_and_back_on_after_even_when_the_call_raises():
    assert gc.isenabled()
    try:
        with gc_paused():
            assert not gc.isenabled()
            raise KeyError("the call failed")
    except KeyError:
        pass
    assert gc.isenabled()


def test_overlapping_calls_turn_it_back_on_only_when_the_last_one_ends():
    inside, release = threading.Event(), threading.Event()

    def other_call():
        with gc_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_call)
    thread.start()
    inside.wait(5)
    with gc_paused():
        pass
    assert not gc.isenabled()  # the other call is still building its answer
    release.set()
    thread.join()
    assert gc.isenabled()


def test_an_application_that_turned_the_collector_off_keeps_it_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_call_of_a_few_queries_is_not_paused_and_a_batch_is():
    with paused_for(PAUSE_FROM - 1):
        assert gc.isenabled()  # a single query's few objects trigger no collection; the pause would cost more
    with paused_for(PAUSE_FROM):
        assert not gc.isenabled()
    assert gc.isenabled()
