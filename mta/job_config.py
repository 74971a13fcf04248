"""The MTA job's configuration: the evaluation config plus where the bank lives, how it is trained,
tracking and where per-user records go."""

from dataclasses import dataclass, field

from mta.bank_trainer import BankTrainConfig
from mta.config import MTAConfig
from suite.config import opt
from suite.tracking import TrackingConfig


@dataclass
class MTAJobConfig(MTAConfig):
    bank_path: str = opt("", "bank folder; empty = BANK_CACHE/<task>-<hash of everything the bank depends on>")
    bank_cache: str = opt(
        "runs/banks",
        "where banks are kept and shared: every run asking for the same bank "
        "(task, data, model, encoder, anchors, anchor recipe) reuses it",
    )
    bank: BankTrainConfig = field(default_factory=BankTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    users_dir: str = opt(
        "runs/users",
        "where per-user records (anchor ids and weights + the stacked LoRA, keyed by a content hash) are "
        "written by `ray_jobs.adapt` and by the pipeline with eval.save_users=true",
    )
