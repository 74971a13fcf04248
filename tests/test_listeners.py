"""Loopback only: every socket the suite listens on in local mode — Ray, the Ray Train workers'
torch.distributed rendezvous and gloo pairs, and memgas.serve — is bound to 127.0.0.1.

Listeners are sampled machine-wide (psutil) while the work runs; ones that existed before the test
are ignored."""

import threading
import time

import numpy as np
import psutil

LOOPBACK = ("127.", "::ffff:127.", "::1")


def _listeners() -> set[tuple[str, int, int | None]]:
    return {
        (c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }


class Sampler:
    def __init__(self):
        self.before = {(ip, port) for ip, port, _ in _listeners()}
        self.seen: set = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen |= {x for x in _listeners() if (x[0], x[1]) not in self.before}
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def exposed(self):
        return sorted(x for x in self.seen if not x[0].startswith(LOOPBACK))


def test_local_ray_train_and_serve_listen_on_loopback_only(lamp_root, tmp_path):
    from memgas.llm import LocalLLM
    from memgas.serve import make_server
    from mta.bank import Bank
    from mta.bank_trainer import BankTrainConfig, train_bank
    from mta.data import load_task_split
    from mta.training import LoraTrainConfig
    from suite.models import ModelConfig
    from suite.ray_local import init_ray

    with Sampler() as s:
        ray = init_ray(num_cpus=2)
        try:
            users = load_task_split("LaMP_2", "train", str(lamp_root))[:1]
            profiles = {u.user_id: u.profile for u in users}
            bank = Bank.create(tmp_path / "bank", list(profiles), np.eye(1, 4), {"task": "LaMP_2"})
            tcfg = LoraTrainConfig(
                r=2, alpha=4, epochs=1, batch_size=2, micro_batch=1, max_samples=4, target_modules=["q_proj", "v_proj"]
            )
            stats = train_bank(
                bank,
                profiles,
                "LaMP_2",
                ModelConfig(name="tiny", max_length=128),
                tcfg,
                BankTrainConfig(num_workers=2, progress=False),
                tmp_path / "out",
            )
            assert stats and stats[0]["steps"] == 2  # two gloo workers really trained
        finally:
            ray.shutdown()
        srv = make_server(LocalLLM("tiny", max_length=128), "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        time.sleep(0.3)
        srv.shutdown()
        srv.server_close()
    assert s.seen, "the sampler saw no new listener at all (is psutil allowed to list sockets?)"
    assert s.exposed() == []
