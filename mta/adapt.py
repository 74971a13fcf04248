"""One user's MTA adapter outside any evaluation (`ray_jobs.adapt`): fuse the anchors retrieved
for the profile, train the stacked LoRA, write the per-user record and a standard peft folder."""

from pathlib import Path

from mta.adapters import AdapterHost
from mta.anchors import user_embeddings
from mta.bank import bank_content_id
from mta.bank_build import build_bank
from mta.data import User, validate_profile_item
from mta.export import save_peft, user_adapter
from mta.fusion import fuse
from mta.job_config import MTAJobConfig
from mta.per_user import load_users
from mta.stacking import stack_user
from mta.training import for_adapter, loo_samples
from mta.users import write_record
from suite.config import ConfigError
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import DataError, read_json
from suite.models import hub_id, load_base


def _profile_user(cfg: MTAJobConfig, profile_file: str | Path, user_id: str | None) -> User:
    """A user from a JSON file holding a profile (a list of items of the task's shape)."""
    items = read_json(profile_file)
    if not isinstance(items, list) or not items:
        raise DataError(profile_file, None, None, "expected a non-empty list of profile items")
    uid = user_id or Path(profile_file).stem
    return User(uid, [validate_profile_item(profile_file, cfg.data.task, uid, i, it) for i, it in enumerate(items)])


def adapt(cfg: MTAJobConfig, out: str | Path, user_id: str | None = None, profile_file: str | None = None) -> dict:
    """One user's adapter, outside any evaluation (`ray_jobs.adapt`): fuse the anchors retrieved
    for the profile, train the stacked LoRA on its items, write the per-user record to
    `cfg.users_dir` and the combined adapter to OUT as a standard peft folder (`mta.export`)."""
    use_device(cfg.model.device)
    if (user_id is None) == (profile_file is None):
        raise ConfigError("adapt: give exactly one of --user and --profile")
    encoder = load_encoder(cfg.encoder)
    bank, _ = build_bank(cfg, Path(cfg.users_dir) / ".bank_runs", encoder, log=lambda *a: None)  # only what is missing
    loaded = bank.load()
    if profile_file is not None:
        user = _profile_user(cfg, profile_file, user_id)
    else:
        users, qfile = load_users(cfg, cfg.data.eval_split, loaded.ids)
        user = next((u for u in users if u.user_id == user_id), None)
        if user is None:
            raise DataError(qfile, user_id, "user_id", f"no such user in the {cfg.data.eval_split} split")
    model, codec = load_base(cfg.model)
    host = AdapterHost(model, cfg.anchor_train.target_modules)
    fused = fuse(loaded, user_embeddings([user], cfg.data.task, encoder)[0], cfg.fusion)
    samples = loo_samples(cfg.data.task, user.profile, 0, cfg.eval.seed, cfg.eval.history_k)
    s_cfg = for_adapter(cfg.stacking, "stack", user.user_id)
    stack_user(host, fused, samples, s_cfg, codec)
    stack_sd = host.state_dict("stack")
    record = write_record(
        cfg.users_dir, user.user_id, bank_content_id(bank.manifest), fused.anchor_ids, fused.weights, stack_sd,
        s_cfg.r, s_cfg.alpha,
    )  # fmt: skip
    sd, rank, padded = user_adapter(fused.state_dict, fused.alpha / fused.r, stack_sd, s_cfg.alpha / s_cfg.r)
    folder = save_peft(out, sd, padded, fused.target_modules, hub_id(cfg.model.name))
    print(f"[adapt] {user.user_id}: anchors {fused.anchor_ids}, rank {rank} (padded to {padded}) -> {folder}")
    print(f"[adapt] per-user record: {record.path}")
    return {"out": str(folder), "record": str(record.path), "rank": rank, "padded_rank": padded,
            "anchors": fused.anchor_ids, "weights": fused.weights}  # fmt: skip
