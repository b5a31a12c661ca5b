"""Executors: in-process, local worker processes and Ray give byte-identical outputs."""
from __future__ import annotations

import operator
import posixpath

import pytest

from mlscale.curate.pipeline import curate
from mlscale.errors import ConfigError
from mlscale.executors import (InProcessExecutor, ProcessExecutor, RayExecutor, available_cores,
                               make_executor)


def test_make_executor_picks_by_kind_and_worker_count():
    assert isinstance(make_executor("local", 1), InProcessExecutor)
    pool = make_executor("local", 3)
    assert isinstance(pool, ProcessExecutor) and pool.workers == 3
    every_core = make_executor("local", 0)
    assert every_core.workers == available_cores()
    with pytest.raises(ConfigError, match="local, ray"):
        make_executor("dask", 2)


def test_process_pool_returns_every_result_and_raises_a_task_error():
    with ProcessExecutor(2) as ex:
        got = dict(ex.map(operator.mul, 3, list(range(10))))
        assert got == {i: 3 * i for i in range(10)}
        with pytest.raises(ZeroDivisionError):
            list(ex.map(operator.truediv, 1, [1, 0, 2]))
        # the pool is still usable after a task failed
        assert dict(ex.map(operator.add, 1, [1, 2])) == {1: 2, 2: 3}


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_process_pool_imap_keeps_input_order_with_a_bounded_window(start_method):
    fed = []

    def tasks():  # a lazy stream: imap must not read it all before yielding
        for i in range(12):
            fed.append(i)
            yield i

    with ProcessExecutor(2, start_method=start_method) as ex:
        results = ex.imap(operator.mul, 3, tasks(), window=3)
        assert next(results) == 0 and len(fed) == 3
        assert list(results) == [3 * i for i in range(1, 12)]
        with pytest.raises(ZeroDivisionError):
            list(ex.imap(operator.truediv, 1, [1, 0, 2]))
    assert list(InProcessExecutor().imap(operator.add, 1, iter([1, 2]))) == [2, 3]
    with pytest.raises(ValueError, match="start_method"):
        ProcessExecutor(2, start_method="thread")


def test_two_workers_and_ray_write_the_bytes_of_one_in_process_worker(reference, tmp_path,
                                                                      outputs):
    expected = outputs.files(reference.out)
    assert len(expected) > 4  # several shards: the executors really split the work

    two = tmp_path / "two"
    curate([reference.folder], two, reference.config("--workers=2"))
    assert outputs.files(two) == expected

    import ray  # an optional extra of mlscale, installed for the tests (make test)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        on_ray = tmp_path / "ray"
        manifest = curate([reference.folder], on_ray, reference.config("--executor=ray"))
        assert outputs.files(on_ray) == expected
        assert manifest["execution"]["executor"] == "ray"
        with RayExecutor(None, 0) as ex:  # joins the running Ray; a Python function for ray.remote
            names = [f"f{i}" for i in range(8)]
            assert list(ex.imap(posixpath.join, "d", iter(names), window=2)) == [f"d/{n}" for n in names]
    finally:
        ray.shutdown()
