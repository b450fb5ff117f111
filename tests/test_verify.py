"""jaxseed.verify: what differs between a recorded run and its rerun, and the likely cause."""

from jaxseed import machine, verify


def test_verify_explains_a_mismatch():
    recorded = {"backend": "gpu", "device_count": 1, "versions": {"jax": "0.1"}, "xla_flags": "",
                "fingerprints": {"init": "a", "shuffle": "b"}}
    rerun = {"backend": "cpu", "device_count": 1, "versions": {"jax": "0.1"}, "xla_flags": "",
             "fingerprints": {"init": "a", "shuffle": "c"}}
    lines = verify.compare(recorded, rerun, [{"epoch": 1, "test_loss": 1.0}, {"epoch": 2, "test_loss": 0.5}],
                           [{"epoch": 1, "test_loss": 1.0}, {"epoch": 2, "test_loss": 0.6}])
    assert lines == ["backend: recorded 'gpu', here 'cpu'", "streams that drew differently: shuffle",
                     "first epoch whose metrics differ: 2 (test_loss)"]


def test_verify_names_another_cpu_and_compares_within_tolerance():
    base = {"backend": "cpu", "device_count": 1, "versions": {"jax": "0.1"}, "xla_flags": "",
            "fingerprints": {"init": "a", "shuffle": "b"}}
    recorded = {**base, "cpu": {"model": "A", "vector_extensions": ["avx2", "avx512f"]}}
    rerun = {**base, "cpu": {"model": "B", "vector_extensions": ["avx2"]}}
    lines = verify.compare(recorded, rerun, [{"epoch": 1, "test_loss": 0.068340, "test_accuracy": 0.9773}],
                           [{"epoch": 1, "test_loss": 0.068785, "test_accuracy": 0.9700}])
    assert lines[0].startswith("cpu: recorded") and "every stream drew the same values" in lines
    assert any(line.startswith("likely cause: another CPU (without --portable") for line in lines)
    assert "test_loss: recorded 0.06834, here 0.068785 (within 2%)" in lines
    assert "test_accuracy: recorded 0.9773, here 0.97 (within 2%)" in lines
    far = verify.compare(recorded, rerun, [{"epoch": 1, "test_loss": 0.5}], [{"epoch": 1, "test_loss": 0.6}])
    assert "test_loss: recorded 0.5, here 0.6 (OUTSIDE 2%)" in far
    portable = {**recorded, "config": {"portable": True}}
    lines = verify.compare(portable, {**rerun, "config": {"portable": True}}, [{"epoch": 1, "test_loss": 0.5}],
                           [{"epoch": 1, "test_loss": 0.5}])
    assert any(line.startswith("likely cause: another CPU, although the run was --portable") for line in lines)
    assert verify.expectation(portable).startswith("--portable run: the same bits expected on any x86 CPU")
    assert verify.expectation(recorded).startswith("not a --portable run")


def test_verify_names_another_thread_pool_or_versions():
    """Same draws, other bits: another XLA CPU thread pool (its kernels split sums by thread) is named
    before the CPU, unless the run was --portable (whose bits do not depend on the pool); another number
    of cores alone is no cause; other versions are named last."""
    base = {"backend": "cpu", "device_count": 1, "versions": {"jax": "0.1"}, "xla_flags": "", "thread_pool": 8,
            "fingerprints": {"init": "a"}, "config": {"portable": False}}
    cpu = {"model": "A", "vector_extensions": ["avx2"], "cores": 2}
    metrics = [{"epoch": 1, "test_loss": 0.5}], [{"epoch": 1, "test_loss": 0.5}]
    lines = verify.compare({**base, "cpu": cpu}, {**base, "thread_pool": 16, "cpu": {**cpu, "cores": 16}}, *metrics)
    assert "thread_pool: recorded 8, here 16" in lines
    assert ("likely cause: another XLA CPU thread pool (8 threads recorded, 16 here; its kernels split their sums "
            "by thread): a run of --cpu-threads N on as many CPU devices as the recorded one gets N threads on any "
            "number of cores") in lines
    cores = verify.compare({**base, "cpu": cpu}, {**base, "cpu": {**cpu, "cores": 16}}, *metrics)
    assert not any(line.startswith("likely cause") for line in cores)
    base["config"] = {"portable": True}
    portable = {**base, "xla_flags": " ".join([machine.PORTABLE_YNN_FUSIONS, *machine.PORTABLE_FLAGS]), "cpu": cpu}
    pool = verify.compare(portable, {**portable, "thread_pool": 16}, *metrics)
    assert "thread_pool: recorded 8, here 16" in pool and not any(line.startswith("likely cause") for line in pool)
    assert "any thread pool" in verify.expectation(portable)
    # --portable under YNNPACK fusions of a user's choice (its reductions on): the pool is named again
    racy = verify.compare({**portable, "xla_flags": ""}, {**portable, "xla_flags": "", "thread_pool": 16}, *metrics)
    assert any(line.startswith("likely cause: another XLA CPU thread pool") for line in racy)
    other = verify.compare({**base, "cpu": cpu}, {**base, "cpu": {**cpu, "model": "B", "cores": 16}}, *metrics)
    assert any(line.startswith("likely cause: another CPU, although the run was --portable") for line in other)
    versions = verify.compare({**base, "cpu": cpu}, {**base, "cpu": cpu, "versions": {"jax": "0.2"}}, *metrics)
    assert any(line.startswith("likely cause: other package versions") for line in versions)


def test_verify_names_other_xla_flags():
    base = {"backend": "cpu", "device_count": 1, "versions": {"jax": "0.1"}, "thread_pool": 2,
            "fingerprints": {"init": "a"}, "cpu": {"model": "A"}}
    lines = verify.compare({**base, "xla_flags": "--xla_cpu_experimental_ynn_fusion_type=-reduce"},
                           {**base, "xla_flags": "--xla_cpu_experimental_ynn_fusion_type=dot"},
                           [{"epoch": 1, "test_loss": 0.5}], [{"epoch": 1, "test_loss": 0.5}])
    assert ("likely cause: other XLA flags ('--xla_cpu_experimental_ynn_fusion_type=-reduce' recorded, "
            "'--xla_cpu_experimental_ynn_fusion_type=dot' here): set XLA_FLAGS to the recorded ones before the "
            "rerun") in lines
