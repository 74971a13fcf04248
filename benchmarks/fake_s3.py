"""An S3-compatible server on loopback for the cluster simulation (issue #33): moto's server with
credentials made up for the run and put in the environment only, and a search of files for the
secret afterwards (credentials must reach no file)."""

from __future__ import annotations

import os
from pathlib import Path

BUCKET = "suite-sim"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


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
        """The checkpoint folders under `prefix` (<prefix>/<run name>/<checkpoint>/...)."""
        names = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                parts = o["Key"].split("/")
                if len(parts) > 3 and parts[2].startswith("anchor-"):
                    names.add(parts[2])
        return sorted(names)

    def stop(self) -> None:
        self.server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
