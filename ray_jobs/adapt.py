"""Launcher of `mta.recipe.adapt`: one user's MTA adapter as a standard peft folder.

    python -m ray_jobs.adapt --config ray_jobs/configs/mta_lamp2_cpu.yaml --user USER_ID --out runs/adapters/USER_ID
    python -m ray_jobs.adapt --config ray_jobs/configs/mta_lamp2_cpu.yaml --profile my_profile.json --out DIR

Fuses the anchors retrieved for the user's profile (the bank is built first if it is missing),
trains the stacked LoRA on the profile's items, writes the per-user record to `users_dir` and OUT
as a peft folder (fused anchors + stack combined exactly, rank padded for vLLM):
`PeftModel.from_pretrained(base, OUT)` or `vllm serve BASE --enable-lora --lora-modules user=OUT`.
`--quiet` is not offered: OUT is the adapter folder, written atomically, holding nothing else.
"""

from __future__ import annotations

import mta.recipe as recipe
from mta.recipe import MTAJobConfig
from ray_jobs.cli import entry, parse


@entry
def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(
        MTAJobConfig,
        __doc__ + "\n" + (recipe.adapt.__doc__ or ""),
        argv,
        options={"user": "a user id of data.eval_split", "profile": "a JSON file: the user's profile items"},
        claim=False,
    )
    recipe.adapt(cfg, args.out, user_id=args.user, profile_file=args.profile)


if __name__ == "__main__":
    main()
