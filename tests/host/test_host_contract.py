"""The service <-> plugin contract (blockstore/host/contract.py): both sides read what the other
wrote, and the supervisor's cheap fence read agrees with reading the whole stats file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockstore.host import contract
from blockstore.host.export import Export, ExportConfig
from blockstore.store.s3 import S3Config

S3 = S3Config("http://127.0.0.1:1", "b", "ak", "secret-9f2", region="r1", prefix="p/")


@pytest.mark.parametrize("fenced,epoch", [(False, None), (False, 3), (True, 12345678901)])
def test_stats_file_round_trips_and_its_head_gives_the_fence(
    tmp_path: Path, fenced: bool, epoch: int | None
) -> None:
    stats = contract.ExportStats(
        fenced=fenced, epoch=epoch, disk="d", io={"read": {"count": 1}}, cache={"hits": 2}
    )
    path = contract.stats_path(tmp_path / "d.sock")
    path.write_text(stats.to_json())
    raw = contract.read_stats(path)
    assert raw is not None and contract.ExportStats.from_dict(raw) == stats
    assert contract.read_fence(path) == (fenced, epoch)


def test_fence_read_falls_back_to_the_whole_file_and_to_none(tmp_path: Path) -> None:
    path = tmp_path / "x.stats.json"
    assert contract.read_fence(path) is None
    path.write_text(json.dumps({"disk": "d", "epoch": 4, "fenced": True}))  # other field order
    assert contract.read_fence(path) == (True, 4)
    path.write_text("not json")
    assert contract.read_fence(path) is None
    assert contract.ExportStats.from_dict({"disk": "d", "new_field": 1}).disk == "d"


def test_every_parameter_the_export_passes_is_one_the_plugin_knows(tmp_path: Path) -> None:
    cfg = ExportConfig(
        disk_id="d", socket=tmp_path / "d.sock", s3=S3, cache_mode="readwrite",
        cache_dir=tmp_path / "c", request_timeout=2, epoch=7,
    )  # fmt: skip
    export = Export(cfg)
    args = export.command()[export.command().index("python") + 2 :]
    params = dict(a.split("=", 1) for a in args)
    assert set(params) <= set(contract.PARAMETERS)
    assert set(contract.REQUIRED) <= set(params)
    assert params["epoch"] == "7" and params["cache-dir"] == str(tmp_path / "c")
    env = export.environment()
    assert contract.credentials(env, None) == ("ak", "secret-9f2")
    assert "secret-9f2" not in " ".join(export.command())
    with pytest.raises(ValueError):
        contract.plugin_args({"no-such-thing": "1"})


def test_repair_settings_and_size_requests_cross_intact(tmp_path: Path) -> None:
    other = S3Config("http://127.0.0.1:2", "b2", "ak2", "sk2", region="r2", prefix="q/")
    got = contract.repair_config(contract.repair_env(other), S3)
    assert got is not None
    assert (got.bucket, got.region, got.prefix) == ("b2", "r2", "q/")
    assert got.endpoint == "http://127.0.0.1:2"
    assert (got.access_key, got.secret_key) == ("ak2", "sk2")
    assert contract.repair_config({}, S3) is None
    path = contract.size_request_path(tmp_path / "d.sock")
    assert contract.read_size_request(path) is None
    contract.write_size_request(path, 1 << 30)
    assert contract.read_size_request(path) == 1 << 30
