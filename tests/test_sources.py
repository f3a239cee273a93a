"""ingest's manifest, WebDataset tar and Parquet-of-bytes sources, locally and on S3 (moto's server):
the same pixels and labels as the folder ingest of the same images, rejected rows with reasons,
--incremental exactly once (also after a run killed mid-write on S3)."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, kill_tree

N = 240  # real MNIST digits, the first N of the bundled 5,000
SHARDS = 3


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """N digits as a folder-per-class tree, WebDataset shards (plus one corrupt sample and one
    without an image), manifests (CSV, JSONL, Parquet; plus a URI that names nothing and a row
    without one) and a
    Hugging Face-style Parquet of {bytes, path} structs."""
    from pipeline.ingest import load_bundled

    imgs, labels = load_bundled("mnist")
    root = tmp_path_factory.mktemp("sources")
    pngs = [_png(imgs[i]) for i in range(N)]
    for i in range(N):
        d = root / "folder" / str(labels[i])
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.png").write_bytes(pngs[i])
    (root / "shards").mkdir()
    per = N // SHARDS
    for s in range(SHARDS):
        members = []
        for i in range(s * per, (s + 1) * per):
            members += [(f"{i:05d}.png", pngs[i]), (f"{i:05d}.cls", str(labels[i]).encode()),
                        (f"{i:05d}.json", json.dumps({"index": i}).encode())]
        if s == 1:
            members += [("bad01.png", pngs[0][:60]), ("bad01.cls", b"0"), ("nopng.cls", b"1")]
        _tar(root / "shards" / f"{s:05d}.tar", members)
    rows = [{"uri": f"../folder/{labels[i]}/{i:05d}.png", "label": str(labels[i])} for i in range(N)]
    rows += [{"uri": "../folder/9/missing.png", "label": "9"}, {"uri": None, "label": "1"}]
    (root / "manifest").mkdir()
    with open(root / "manifest" / "m.csv", "w") as fh:
        fh.write("uri,label\n" + "".join(f"{r['uri'] or ''},{r['label']}\n" for r in rows))
    with open(root / "manifest" / "m.jsonl", "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    # absolute URIs in the Parquet manifest (relative ones are resolved against the manifest's folder)
    pq.write_table(pa.Table.from_pylist([{**r, "uri": r["uri"] and str(root / r["uri"][3:])} for r in rows]),
                   root / "manifest" / "m.parquet", row_group_size=100)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    hf = pa.table({"image": pa.array([{"bytes": pngs[i], "path": f"{i:05d}.png"} for i in range(N)], struct),
                   "label": pa.array(labels[:N].astype(np.int64))})
    (root / "hf").mkdir()
    pq.write_table(hf.slice(0, N // 2), root / "hf" / "train-00000.parquet", row_group_size=50)
    pq.write_table(hf.slice(N // 2), root / "hf" / "train-00001.parquet", row_group_size=50)
    return {"root": root, "labels": labels[:N], "images": imgs[:N]}


def _table(uri):
    """An output table's committed rows (its log when it has one), read with pyarrow."""
    from pipeline.io import arrow_filesystem
    from pipeline.tablelog import committed_files

    fs, _ = arrow_filesystem(uri)
    files = committed_files(uri)
    return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files]) if files else None


def _counts(runs) -> tuple:
    """(rows_in, rows_out, rows_rejected) of the latest run in a runs table."""
    row = max(pq.read_table(str(runs)).to_pylist(), key=lambda r: r["started_at"])
    assert row["status"] == "succeeded", row["error"]
    return row["rows_in"], row["rows_out"], row["rows_rejected"]


def _index(path: str) -> int:
    name = path.rsplit("#", 1)[-1].rsplit("/", 1)[-1]
    return int(name.split(".")[0])


def _check_digits(digits, out, expect_rejected):
    images = _table(f"{out}/images")
    rows = images.select(["path", "label", "label_index", "height", "width", "nChannels", "data"]).to_pylist()
    assert len(rows) == N and len({r["path"] for r in rows}) == N
    for r in rows:
        i = _index(r["path"])
        assert (r["height"], r["width"], r["nChannels"]) == (28, 28, 1)
        assert r["data"] == digits["images"][i].tobytes()  # the same pixels as the digit itself
        assert r["label"] == str(digits["labels"][i]) and r["label_index"] == digits["labels"][i]
    rejected = _table(f"{out}/rejected")
    reasons = sorted(rejected.column("reason").to_pylist()) if rejected is not None else []
    assert len(reasons) == len(expect_rejected)
    for reason, expected in zip(reasons, sorted(expect_rejected)):
        assert expected in reason, reasons


def test_folder_baseline_matches_digits(cli, digits, tmp_path):
    """The folder ingest of the same images, the pixels every other source is compared with."""
    code, out, err = cli("ingest", "--source", digits["root"] / "folder", "--output", tmp_path / "ds")
    assert code == 0, err
    images = _table(f"{tmp_path}/ds/images")
    by_index = {_index(p): d for p, d in zip(images.column("path").to_pylist(), images.column("data").to_pylist())}
    assert len(by_index) == N and all(by_index[i] == digits["images"][i].tobytes() for i in range(N))


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_manifest(cli, digits, tmp_path, name):
    code, out, err = cli("ingest", "--source", digits["root"] / "manifest" / name, "--output", tmp_path / "ds",
                         "--uri-column", "uri", "--label-column", "label")
    assert code == 0, err
    assert _counts(tmp_path / "runs") == (N + 2, N, 2)
    _check_digits(digits, tmp_path / "ds", ["no such file", "manifest row without a URI"])


def test_manifest_incremental_rerun_adds_nothing(cli, digits, tmp_path):
    """Every input has a stable key, the URI-less row too: a second run finds nothing new."""
    for expected in ((N + 2, N, 2), (0, 0, 0)):
        code, _, err = cli("ingest", "--source", digits["root"] / "manifest" / "m.csv", "--output", tmp_path / "ds",
                           "--label-column", "label", "--incremental")
        assert code == 0, err
        assert _counts(tmp_path / "runs") == expected
    _check_digits(digits, tmp_path / "ds", ["no such file", "manifest row without a URI"])


def test_manifest_names_a_missing_column(cli, digits, tmp_path):
    code, _, err = cli("ingest", "--source", digits["root"] / "manifest" / "m.csv", "--output", tmp_path / "ds",
                       "--uri-column", "url")
    assert code == 2 and "no column 'url' (--uri-column)" in err


def test_tar_shards(cli, digits, tmp_path):
    code, out, err = cli("ingest", "--source", digits["root"] / "shards", "--output", tmp_path / "ds")
    assert code == 0, err
    assert _counts(tmp_path / "runs") == (N + 2, N, 2)
    _check_digits(digits, tmp_path / "ds", ["truncated image", "no image member"])
    paths = _table(f"{tmp_path}/ds/images").column("path").to_pylist()
    assert f"file:{digits['root']}/shards/00000.tar#00000" in paths  # shard + sample key


def test_parquet_of_bytes(cli, digits, tmp_path):
    code, out, err = cli("ingest", "--source", digits["root"] / "hf", "--output", tmp_path / "ds",
                         "--image-column", "image", "--label-column", "label")
    assert code == 0, err
    assert _counts(tmp_path / "runs") == (N, N, 0)
    images = _table(f"{tmp_path}/ds/images")
    got = sorted(zip(images.column("path").to_pylist(), images.column("data").to_pylist(),
                     images.column("label").to_pylist()))
    first = [(d, lab) for p, d, lab in got if "train-00000.parquet#" in p]
    assert len(got) == N and len(first) == N // 2
    # rows are keyed file#rowgroup-row: in order, row r of file 0 is digit r
    assert [d for d, _ in first] == [digits["images"][i].tobytes() for i in range(N // 2)]
    assert [lab for _, lab in first] == [str(x) for x in digits["labels"][:N // 2]]


def test_incremental_tar_adds_only_new_shards_samples(cli, digits, tmp_path):
    src = tmp_path / "shards"
    src.mkdir()
    for s in range(2):
        os.link(digits["root"] / "shards" / f"{s:05d}.tar", src / f"{s:05d}.tar")
    code, out, err = cli("ingest", "--source", src, "--output", tmp_path / "ds", "--incremental")
    assert code == 0, err
    first = _counts(tmp_path / "runs")
    os.link(digits["root"] / "shards" / "00002.tar", src / "00002.tar")
    code, out, err = cli("ingest", "--source", src, "--output", tmp_path / "ds", "--incremental")
    assert code == 0, err
    assert first == (2 * N // SHARDS + 2, 2 * N // SHARDS, 2) and _counts(tmp_path / "runs") == (N // SHARDS,) * 2 + (0,)
    code, out, err = cli("ingest", "--source", src, "--output", tmp_path / "ds", "--incremental")
    assert code == 0 and _counts(tmp_path / "runs") == (0, 0, 0)
    _check_digits(digits, tmp_path / "ds", ["truncated image", "no image member"])


# ---------------------------------------------------------------- on S3 (moto's server)

@pytest.fixture(scope="module")
def s3_digits(s3_server, digits):
    bucket = s3_server.bucket("sources")
    for name in ("folder", "shards", "manifest", "hf"):
        s3_server.upload(digits["root"] / name, f"{bucket}/in/{name}")
    return bucket


@pytest.mark.parametrize("source,extra,rejected", [
    ("shards", [], ["truncated image", "no image member"]),
    ("manifest/m.jsonl", ["--label-column", "label"], ["no such file", "manifest row without a URI"]),
    ("folder", [], []),
    ("hf", ["--image-column", "image", "--label-column", "label"], []),
])
def test_s3_source_to_s3(cli, digits, s3_digits, tmp_path, source, extra, rejected):
    out = f"{s3_digits}/out/{source.replace('/', '_')}"
    code, stdout, err = cli("ingest", "--source", f"{s3_digits}/in/{source}", "--output", out, *extra)
    assert code == 0, err
    assert _counts(tmp_path / "runs")[1:] == (N, len(rejected))
    if source == "hf":
        assert len(_table(f"{out}/images")) == N
        return
    _check_digits(digits, out, rejected)


def test_s3_incremental_killed_then_rerun_exactly_once(s3_server, digits, s3_digits, tmp_path):
    """A run killed mid-write leaves only uncommitted files; the rerun deletes them and adds each
    sample once."""
    out = f"{s3_digits}/inc"
    env = {**os.environ, **s3_server.env, "PYTHONPATH": ROOT}
    args = [sys.executable, "-m", "pipeline", "ingest", "--source", f"{s3_digits}/in/shards", "--output", out,
            "--incremental", "--runs-table", str(tmp_path / "runs")]
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fs = s3_server.filesystem()
    from pyarrow import fs as pafs
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                infos = fs.get_file_info(pafs.FileSelector(out.removeprefix("s3://") + "/images", recursive=True))
            except (FileNotFoundError, OSError):
                infos = []
            if any(i.path.endswith(".parquet") for i in infos):  # a task has written: kill it all now
                break
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    from pipeline.tablelog import committed_files
    written = [i.path for i in fs.get_file_info(pafs.FileSelector(out.removeprefix("s3://") + "/images", recursive=True))
               if i.path.endswith(".parquet")]
    assert written and not committed_files(f"{out}/images")  # killed after writing, before its commit
    r = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and _counts(tmp_path / "runs") == (0, 0, 0), r.stderr[-3000:]
    _check_digits(digits, out, ["truncated image", "no image member"])
