"""The bank's checkpoints in S3-compatible object storage (`bank.storage_path=s3://...`, as
cluster.yaml's SUITE_STORAGE), against moto's S3 server on loopback: a worker killed mid-anchor is
restored from the checkpoint in the bucket, the bank equals an uninterrupted run's, and the
credentials, which come from the environment only, reach no file."""

import pytest
import torch

from mta.bank import Bank
from mta.bank_trainer import BankTrainConfig, train_bank
from suite.models import ModelConfig
from tests.conftest import tiny_lora
from tests.mta.test_bank_trainer import _plan


@pytest.fixture(scope="module")
def s3_ray():
    """moto's S3 server on loopback (`benchmarks.fake_s3.S3`: credentials made up and put in the
    environment only) and a local Ray started after them (Ray's processes inherit them, as a
    cluster's nodes do; nothing passes them on)."""
    pytest.importorskip("boto3")
    from benchmarks.fake_s3 import S3
    from suite.ray_local import init_ray

    s3 = S3()
    ray = init_ray(num_cpus=2)
    yield s3, ray
    ray.shutdown()
    s3.stop()


def test_a_killed_worker_restores_from_the_checkpoint_in_s3(s3_ray, lamp_root, tmp_path):
    """Catches: checkpoints written to a local folder whatever `storage_path` says (the bucket would
    hold none, and the local out folder would), a restore that starts the anchor over (resumed
    from step 0), and a credential written into a config, log or checkpoint."""
    from benchmarks.fake_s3 import BUCKET, files_holding

    srv, ray = s3_ray
    s3, uri = srv.client, srv.uri("banks")
    mcfg = ModelConfig(name="tiny", max_length=256)
    tcfg = tiny_lora(max_samples=6)
    marker = tmp_path / "killed"
    bank, profiles = _plan(lamp_root, tmp_path / "s3_bank")
    cfg = BankTrainConfig(
        backend="ray",
        num_workers=2,
        checkpoint_every=1,
        progress=False,
        max_failures=2,
        storage_path=uri,
        name="s3bank",
        fail_at={"anchor": 0, "step": 2, "rank": 1, "marker": str(marker)},
    )
    stats = train_bank(bank, profiles, "LaMP_2", mcfg, tcfg, cfg, tmp_path / "out")
    assert marker.exists()  # the worker really was killed at step 2 of the first anchor
    first = next(iter(profiles))
    by = {s["anchor"]: s for s in stats}
    assert by[first]["steps"] == 3 and by[first]["resumed_from_step"] == 1  # restored, not restarted
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="banks/s3bank/").get("Contents", [])]
    assert any("checkpoint_" in k for k in keys), keys[:5]  # the checkpoints live in the bucket
    assert not (tmp_path / "out" / "ray_results").exists()  # and not in a local folder
    # the same tensors as an uninterrupted single-process run
    ref, _ = _plan(lamp_root, tmp_path / "ref_bank")
    train_bank(ref, profiles, "LaMP_2", mcfg, tcfg, BankTrainConfig(backend="local", progress=False), tmp_path)
    a, b = Bank(bank.path).load(), Bank(ref.path).load()
    assert a.ids == b.ids
    for sa, sb in zip(a.adapters, b.adapters):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)
    # the secret key is in no file: the run's folders, Ray's session logs, the bucket's objects
    session = ray._private.worker._global_node.get_session_dir_path()
    assert files_holding(srv.secret, tmp_path, session) == []
    for k in keys:
        assert srv.secret.encode() not in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read(), k
