"""export: an images table → WebDataset tar shards, read back with the webdataset package as GPU training does."""

import os
import tarfile
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import export
from pipeline import images as im

wds = pytest.importorskip("webdataset", reason="webdataset (requirements-dev.txt) reads the shards back")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name,size", [("0123456789abcdef" * 2 + ".png", 127), ("f" * 32 + ".json", 0),
                                       ("a.cls", 1), ("e" * 32 + ".jpg", 160_000_016)])
def test_member_headers_are_tarfiles_own(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    assert export.header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def table_pixels(table) -> dict:
    """{sample key: (HxWxC RGB pixels, label_index)} of an images table, read with pyarrow."""
    rows = pq.read_table(str(table), columns=["path", "height", "width", "nChannels", "data", "label_index"])
    return {export.sample_key(r["path"]): (im.row_to_array(r["height"], r["width"], r["nChannels"], r["data"]),
                                           r["label_index"]) for r in rows.to_pylist()}


def check_index(out) -> dict:
    """The manifest, the index and the tar files agree: every committed shard holds exactly the samples
    the index puts in it, in its order, each starting at its offset; {shard: samples}."""
    manifest = export.read_manifest(str(out)).to_pylist()
    index = export.read_index(str(out)).to_pylist()
    by_shard = defaultdict(list)
    for row in index:
        by_shard[row["shard"]].append(row)
    shards = {f["file"]: f for f in manifest if f["kind"] == "shard"}
    assert set(by_shard) == set(shards) and sum(f["rows"] for f in shards.values()) == len(index)
    for file, rows in by_shard.items():
        assert os.path.getsize(out / file) == shards[file]["bytes"]
        with tarfile.open(out / file) as tar:
            members = tar.getmembers()
        starts = {}
        for m in members:
            starts.setdefault(m.name.split(".", 1)[0], m.offset)
        assert list(starts) == [r["key"] for r in rows] == [r["key"] for r in sorted(rows, key=lambda r: r["offset"])]
        assert [starts[r["key"]] for r in rows] == [r["offset"] for r in rows]
        assert len(rows) == shards[file]["rows"]
        ends = [r["offset"] + r["size"] for r in rows]
        assert ends[:-1] == [r["offset"] for r in rows[1:]]  # each sample's members end where the next begin
        assert members[-1].offset_data + members[-1].size <= ends[-1]
    return {f: len(r) for f, r in by_shard.items()}


# webdataset's decoded arrays are read-only; the DataLoader's collate only reads them
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_mnist_shards_read_back_into_a_dataloader(mnist, cli, tmp_path):
    out = tmp_path / "shards"
    code, stdout, err = cli("export", "--input", mnist, "--output", out, "--shard-size", "700", "--partitions", "3")
    assert code == 0, err
    expected = table_pixels(mnist)
    per_shard = check_index(out)
    assert sum(per_shard.values()) == len(expected) == 5000
    assert max(per_shard.values()) == 700 and all(0 < n <= 700 for n in per_shard.values())
    # 3 tasks x 2 splits, each series of shards cut every 700 samples
    assert len(per_shard) == sum(-(-n // 700) for n in _per_task_split(out).values())

    urls = export.shard_urls(str(out), "train") + export.shard_urls(str(out), "test")
    assert len(urls) == len(per_shard)
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("l8").to_tuple("__key__", "png", "cls")
    seen = {}
    for keys, pixels, labels in torch.utils.data.DataLoader(dataset, batch_size=500):
        seen.update(zip(keys, zip(pixels.numpy(), labels.tolist())))
    assert set(seen) == set(expected)
    assert all(np.array_equal(seen[k][0], expected[k][0][:, :, 0]) and seen[k][1] == expected[k][1] for k in expected)
    index = export.read_index(str(out)).to_pylist()
    table = pq.read_table(mnist, columns=["path", "split"]).to_pylist()
    assert {(r["key"], r["path"], r["split"]) for r in index} == {(export.sample_key(r["path"]), r["path"], r["split"])
                                                                   for r in table}
    # hashed over the tasks, so a shard mixes the digits rather than holding one run of the table
    first = [seen[r["key"]][1] for r in index[:700]]
    assert len(set(first)) == 10


def _per_task_split(out) -> dict:
    """{(task, split): samples} from the index: shard names begin shard-TASK-."""
    counts = defaultdict(int)
    for row in export.read_index(str(out)).to_pylist():
        counts[(row["shard"].split("/")[1].split("-")[1], row["split"])] += 1
    return counts


def test_byte_sized_jpeg_shards_and_rejected_rows(spark, cli, tmp_path):
    from conftest import digits_table

    table = digits_table(tmp_path / "t", 300, 0)
    expected = table_pixels(table)
    bad = tmp_path / "t" / "split=train" / "bad.parquet"
    pq.write_table(pq.read_table(next((tmp_path / "t" / "split=train").glob("*.parquet"))).slice(0, 1)
                   .set_column(0, "path", [["short"]]).set_column(8, "data", [[b"xx"]]), bad)
    out = tmp_path / "jpeg"
    limit = 64 * 1024
    code, stdout, err = cli("export", "--input", table, "--output", out, "--shard-size", "64KiB", "--format", "jpeg",
                            "--quality", "90", "--split", "train", "--partitions", "2")
    assert code == 0, err
    per_shard = check_index(out)
    manifest = export.read_manifest(str(out)).to_pylist()
    sizes = [f["bytes"] for f in manifest if f["kind"] == "shard"]
    assert len(sizes) > 2 and all(s <= limit for s in sizes)
    assert sum(per_shard.values()) == 300
    rejected = pq.read_table(out / next(f["file"] for f in manifest if f["kind"] == "rejected")).to_pylist()
    assert [(r["path"], r["stage"]) for r in rejected] == [("short", "export")] and "expected 64" in rejected[0]["reason"]
    assert "rows_rejected  1" in stdout
    dataset = wds.WebDataset(export.shard_urls(str(out)), shardshuffle=False).decode("l8").to_tuple("__key__", "jpg")
    errors = [np.abs(img.astype(int) - expected[key][0][:, :, 0]).mean() for key, img in dataset]
    assert len(errors) == 300 and np.mean(errors) < 4  # JPEG at quality 90 on 8x8 digits: a few levels off


def test_existing_output_and_bad_options_are_one_line(mnist, cli, tmp_path, capsys):
    out = tmp_path / "shards"
    out.mkdir()
    cases = {"already exists": ["--output", out],
             "bad shard size": ["--output", tmp_path / "a", "--shard-size", "12 parsecs"],
             "at least 10240 bytes": ["--output", tmp_path / "b", "--shard-size", "1KB"],
             "--quality 0": ["--output", tmp_path / "c", "--format", "jpeg", "--quality", "0"],
             "no such images table": ["--output", tmp_path / "d", "--input", tmp_path / "nope"]}
    for needle, args in cases.items():
        if "--input" not in args:
            args = ["--input", mnist, *args]
        try:
            code, _, err = cli("export", *args)
        except SystemExit as exc:  # argparse rejects bad option values itself, also with exit 2
            code, err = exc.code, capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if "error" in line]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (needle, err)
    assert os.listdir(out) == [] and set(os.listdir(tmp_path)) <= {"runs", "shards"}


def test_export_to_s3_commits_by_manifest(mnist, cli, s3_server, tmp_path):
    """To an object store: shards, index and manifest written through pyarrow's S3 filesystem with no
    rename; an overwrite leaves only the new export's files."""
    from pyarrow import fs as pafs

    uri = s3_server.bucket("exports") + "/mnist"
    store = s3_server.filesystem()
    for mode in ("error", "overwrite"):
        code, stdout, err = cli("export", "--input", mnist, "--output", uri, "--shard-size", "2000",
                                "--split", "test", "--partitions", "2", "--mode", mode)
        assert code == 0, err
    manifest = export.read_manifest(uri).to_pylist()
    files = {i.path for i in store.get_file_info(pafs.FileSelector("exports/mnist", recursive=True))
             if i.type == pafs.FileType.File}
    assert files == {f"exports/mnist/{f['file']}" for f in manifest} | {"exports/mnist/manifest.parquet",
                                                                         "exports/mnist/_sparkgan.json"}
    code, _, err = cli("export", "--input", mnist, "--output", uri)
    assert code == 2 and "already exists" in err

    local = tmp_path / "copy"
    pafs.copy_files("exports/mnist", str(local), source_filesystem=store)
    expected = table_pixels(mnist)
    tests = [r["path"] for r in pq.read_table(mnist, columns=["path", "split"]).to_pylist() if r["split"] == "test"]
    per_shard = check_index(local)
    assert sum(per_shard.values()) == len(tests)
    dataset = wds.WebDataset(export.shard_urls(str(local), "test"), shardshuffle=False).decode("l8").to_tuple(
        "__key__", "png", "cls")
    got = {key: (img, label) for key, img, label in dataset}
    assert set(got) == {export.sample_key(p) for p in tests}
    assert all(np.array_equal(img, expected[k][0][:, :, 0]) and label == expected[k][1] for k, (img, label) in got.items())
