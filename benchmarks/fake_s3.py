"""An S3-compatible server on loopback for the cluster simulation (issue #33): moto's server with
credentials made up for the run and put in the environment only, the checkpoints Ray Train has
registered (in its bucket or on disk), and a search of files for the secret afterwards
(credentials must reach no file)."""

from __future__ import annotations

import os
from pathlib import Path

BUCKET = "suite-sim"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
SNAPSHOT = "checkpoint_manager_snapshot.json"  # where Ray Train records the checkpoints it registered


class S3:
    """moto's S3 server on loopback, with credentials made up for this run and put in the environment
    only (what the cluster's nodes inherit); `uri` is the bank's `storage_path` in its bucket."""

    def __init__(self):
        import secrets

        import boto3
        from moto.server import ThreadedMotoServer

        self.secret = "sim-" + secrets.token_hex(16)
        self._saved = {k: os.environ.get(k) for k in CREDENTIALS}
        os.environ.update(AWS_ACCESS_KEY_ID="sim", AWS_SECRET_ACCESS_KEY=self.secret, AWS_DEFAULT_REGION="us-east-1")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}")
        self.client.create_bucket(Bucket=BUCKET)

    def uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def checkpoints(self, prefix: str) -> list[str]:
        """The checkpoints under `prefix` (<prefix>/<run name>/<checkpoint>/...) that Ray Train has
        registered (listed in the run's checkpoint_manager_snapshot.json): a folder already uploaded
        but not yet registered is not restored from if its node dies now."""
        names: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/" + SNAPSHOT):
                    body = self.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
                    names.update(registered(body))
        return sorted(names)

    def stop(self) -> None:
        self.server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def registered(snapshot: bytes | str) -> list[str]:
    """The checkpoint folder names a Ray Train checkpoint_manager_snapshot.json lists ([] for a
    snapshot being written or unreadable)."""
    import json

    try:
        results = json.loads(snapshot).get("checkpoint_results") or []
    except (ValueError, AttributeError):
        return []
    return [r["checkpoint_dir_name"] for r in results if isinstance(r, dict) and r.get("checkpoint_dir_name")]


def registered_under(storage: Path) -> list[str]:
    """`S3.checkpoints` for a storage folder on disk (<storage>/<run name>/<checkpoint>)."""
    names: set[str] = set()
    for snap in Path(storage).glob(f"*/{SNAPSHOT}"):
        try:
            names.update(registered(snap.read_bytes()))
        except OSError:  # replaced meanwhile
            pass
    return sorted(names)


def files_holding(secret: str, *roots: Path) -> list[str]:
    """Every file under `roots` whose bytes contain `secret`."""
    needle, hits = secret.encode(), []
    for root in roots:
        for p in Path(root).rglob("*"):
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def redacted_contexts(secret: str, files: list[str], width: int = 120) -> dict[str, str]:
    """For each file, the text around the secret's first occurrence with the secret itself replaced
    by `<secret>`: enough to see which component wrote it, without writing it again."""
    out = {}
    for f in files:
        try:
            data = Path(f).read_bytes()
        except OSError:
            continue
        i = data.find(secret.encode())
        if i >= 0:
            chunk = data[max(0, i - width) : i + len(secret) + width].decode("utf-8", "replace")
            out[f] = chunk.replace(secret, "<secret>")
    return out
