"""Published S3 folders as LoRAX lists them: no adapter's bare-prefix listing finds another's keys.

LoRAX's S3 source (`server/lorax_server/utils/sources/s3.py`, predibase/lorax) splits an
`s3://BUCKET/ID` adapter id at the first "/", then lists `bucket.objects.filter(Prefix=ID)`:
a bare prefix, no trailing "/". Its endpoint comes from `S3_ENDPOINT_URL` (not AWS's or ours).
With folders named by bare user ids, `alice` listed `alice2/...` and `mta` listed
`mta-manifest.json`; `engine_name` folders (`<id>~<12 hex>`, "~" outside the id alphabet)
make every listing exactly its own folder. Runs on the moto S3 server (.ci/services.sh).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.publish.targets import MANIFEST_NAME
from mta.registry.service import PublishRequest, add_user, fuse_user, publish_users
from tests.support import TASK, movie_user, open_registry, push_folders, write_anchor_bank

FILES = {"adapter_config.json", "adapter_model.safetensors"}


@pytest.fixture
def registry_with_bank(tmp_path, tiny_model_dir, tiny_embedder_dir, tiny_shapes):
    ctx = open_registry(tmp_path / "reg")
    folders, profiles = write_anchor_bank(tmp_path / "anchors", tiny_shapes, items=8, seed=0)
    push_folders(ctx, folders, profiles, tiny_model_dir, tiny_embedder_dir)
    yield ctx
    ctx.close()


def lorax_listing(adapter_id: str) -> list[str]:
    """The keys LoRAX's S3 source lists for `adapter_id` (its boto3 calls, its env variable)."""
    import boto3
    from botocore.config import Config

    bucket_name, model_id = adapter_id.removeprefix("s3://").split("/", 1)
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    s3 = boto3.resource("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], config=config)
    return [f.key for f in s3.Bucket(bucket_name).objects.filter(Prefix=model_id)]


def lorax_filenames(adapter_id: str) -> set[str]:
    """The file names LoRAX downloads for the adapter (`key.removeprefix(id).lstrip("/")`)."""
    model_id = adapter_id.removeprefix("s3://").split("/", 1)[1]
    return {key.removeprefix(model_id).lstrip("/") for key in lorax_listing(adapter_id)}


def add(ctx: RegistryContext, *ids: str) -> None:
    for n, user_id in enumerate(ids):
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6, seed=n))
        fuse_user(ctx, user_id)


@pytest.mark.integration
@pytest.mark.parametrize("prefix", ["loras", ""])
def test_lorax_lists_exactly_one_adapter_per_name(
    registry_with_bank, s3_client, s3_store_url, monkeypatch, prefix
):
    monkeypatch.setenv("S3_ENDPOINT_URL", os.environ["MTA_S3_ENDPOINT_URL"])
    bucket = s3_store_url.removeprefix("s3://").split("/")[0]
    root = f"s3://{bucket}/{prefix}".rstrip("/")
    ids = ("alice", "alice2", "alice.b", "mta", "bob")
    add(registry_with_bank, *ids)
    names = dict(publish_users(registry_with_bank, root).names)
    # An id built to extend bob's name, were names "<id>@<version>" ("@" is an id character).
    version = names["bob"].rsplit("~", 1)[1]
    add(registry_with_bank, f"bob@{version}x")
    second = publish_users(registry_with_bank, root, PublishRequest(user_ids=(f"bob@{version}x",)))
    names.update(second.names)
    assert len(names) == len(ids) + 1

    base = f"s3://{bucket}/{prefix + '/' if prefix else ''}"
    for user_id, name in names.items():
        keys = lorax_listing(base + name)
        assert sorted(Path(key).name for key in keys) == sorted(FILES), (user_id, keys)
        assert lorax_filenames(base + name) == FILES
        assert all(key.split("/")[-2] == name for key in keys)
    # The hazard this layout removes: bare ids as folders listed their neighbours' keys.
    assert any("alice2" in key for key in lorax_listing(base + "alice"))
    if not prefix:
        assert MANIFEST_NAME in lorax_listing(base + "mta")
        assert MANIFEST_NAME not in lorax_listing(base + names["mta"])
