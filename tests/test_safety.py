"""Safe by default (README, Safety): each way to lose data or run code is made to happen here, then
what is on disk and in the runs table is checked."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import images as im
from pipeline import safety
from pipeline.errors import PipelineError
from tests.conftest import ROOT, digits_table, kill_tree, signal_tree

# ---------------------------------------------------------------- no code from data files


class Planted:
    """A pickle that runs a command when loaded: what an attacker with write access to a checkpoint
    folder (a mount every worker can write) would plant."""

    def __init__(self, proof):
        self.proof = str(proof)

    def __reduce__(self):
        return (os.system, (f"touch {self.proof}",))


def plant(path, proof):
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": Planted(proof)}, path)


def test_a_planted_pickle_is_refused_by_name_and_runs_nothing(tmp_path):
    import torch

    plant(tmp_path / "checkpoint.pt", tmp_path / "pwned")
    with pytest.raises(PipelineError, match=r"^--resume: the checkpoint .*checkpoint\.pt holds more than tensors"):
        safety.load_tensors(str(tmp_path / "checkpoint.pt"), "--resume: the checkpoint")
    assert not (tmp_path / "pwned").exists()
    torch.save({"w": torch.ones(2), "step": 3, "cfg": {"lr": 1e-4, "model": "dcgan"}}, tmp_path / "good.pt")
    state = safety.load_tensors(str(tmp_path / "good.pt"), "x", mmap=True)
    assert state["step"] == 3 and state["cfg"]["model"] == "dcgan" and torch.equal(state["w"], torch.ones(2))


def _srgan_generator(folder):
    import torch

    from pipeline.gan.models import SRResNet

    os.makedirs(folder, exist_ok=True)
    torch.save(SRResNet(1, 8, 4, True).state_dict(), os.path.join(folder, "generator.pt"))
    with open(os.path.join(folder, "generator.json"), "w") as fh:
        json.dump({"model": "srgan", "width": 8, "blocks": 1, "nz": 100, "bicubic_skip": True}, fh)


def test_planted_model_generator_and_checkpoint_files_stop_the_jobs(spark, cli, tmp_path):
    proof = tmp_path / "pwned"
    table = digits_table(tmp_path / "digits", 64, 16)
    # predict_digits: a model folder with a planted lenet5.pt
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "lenet5.json").write_text(json.dumps({"engine": "torch", "classes": 10}))
    plant(tmp_path / "model" / "lenet5.pt", proof)
    code, _, err = cli("predict_digits", "--model", tmp_path / "model", "--input", table, "--output", tmp_path / "p")
    assert code == 2 and "--model" in err and "lenet5.pt holds more than tensors" in err
    # upscale: a planted generator.pt
    _srgan_generator(tmp_path / "g")
    plant(tmp_path / "g" / "generator.pt", proof)
    code, _, err = cli("upscale", "--generator", tmp_path / "g", "--input", table, "--output", tmp_path / "u")
    assert code == 2 and "generator.pt holds more than tensors" in err
    # train_gan --resume: a planted checkpoint in OUT.checkpoints, the folder every rank reads
    gan = ("train_gan", "--input", table, "--output", tmp_path / "dc", "--steps", 2, "--checkpoint-every", 2,
           "--batch-size", 8, "--width", 8, "--num-processes", 1, "--local-mode", "on")
    code, _, err = cli(*gan)
    assert code == 0, err
    plant(tmp_path / "dc.checkpoints" / "step-000002" / "checkpoint.pt", proof)
    code, _, err = cli(*gan, "--steps", 3, "--resume", "auto", "--mode", "overwrite")
    assert code == 2 and "checkpoint.pt holds more than tensors" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "dc" / "generator.pt").exists()  # the refused run replaced nothing
    # train_digits --resume: a planted state.pt in a complete epoch checkpoint of this configuration
    ckpt = tmp_path / "lenet.checkpoints"
    code, _, err = cli("train_digits", "--engine", "torch", "--input", table, "--output", tmp_path / "lenet",
                       "--epochs", 1, "--num-processes", 1, "--local-mode", "on", "--augment", 0)
    assert code == 0, err
    plant(ckpt / "epoch-0001" / "state.pt", proof)
    code, _, err = cli("train_digits", "--engine", "torch", "--input", table, "--output", tmp_path / "lenet",
                       "--epochs", 2, "--num-processes", 1, "--local-mode", "on", "--augment", 0, "--resume",
                       "--mode", "overwrite")
    assert code == 2 and "state.pt holds more than tensors" in err
    assert not proof.exists()
    for out in ("p", "u"):
        assert not (tmp_path / out).exists()


def test_a_keras_model_with_python_code_is_refused(tmp_path):
    import keras

    from pipeline.featurize import build_model

    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(tmp_path / "lam.keras")
    with pytest.raises(ValueError, match=r"modelFile .*lam\.keras: refused: .*Lambda"):
        build_model(None, str(tmp_path / "lam.keras"), None, None)


def test_bigdl_files_load_only_when_nobody_else_can_write_them(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "optim").write_bytes(b"x")
    safety.check_private(str(tmp_path / "ckpt"), "--resume: the checkpoint")
    os.chmod(tmp_path / "ckpt" / "optim", 0o666)
    with pytest.raises(PipelineError, match="optim is writable by other users"):
        safety.check_private(str(tmp_path / "ckpt"), "--resume: the checkpoint")


# ---------------------------------------------------------------- outputs that cannot hurt

def test_outputs_that_overlap_inputs_or_guarded_places_are_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cases = [({"--source": src}, {"--output": src}, "--output .*: is the input --source"),
             ({"--source": src}, {"--output": src / "a" / "out"}, "lies inside the input --source"),
             ({"--input": src / "a"}, {"--output": src}, "holds the input --input"),
             ({"--input": src / "a"}, {"--checkpoint-dir": src}, "--checkpoint-dir .*: holds the input"),
             ({}, {"--output": tmp_path / "o", "--runs-table": tmp_path / "o" / "runs"}, "overlaps --runs-table"),
             ({}, {"--output": tmp_path / "o", "--runs-table": tmp_path / "o"}, "is --runs-table"),
             ({}, {"--output": "."}, "is or holds the working directory"),
             ({}, {"--output": tmp_path.parent}, "is or holds the working directory"),
             ({}, {"--output": os.path.expanduser("~")}, "is or holds your home folder"),
             ({}, {"--output": "/"}, "is or holds the root folder"),
             ({}, {"--output": "/proc"}, "is a mount point")]
    for inputs, outputs, needle in cases:
        with pytest.raises(PipelineError, match=needle):
            safety.check_paths({k: str(v) for k, v in inputs.items()}, {k: str(v) for k, v in outputs.items()})
    # a link to the source is the source
    os.symlink(src, tmp_path / "link")
    with pytest.raises(PipelineError, match="is the input"):
        safety.check_paths({"--source": str(tmp_path / "link")}, {"--output": str(src)})
    safety.check_paths({"--source": str(src)}, {"--output": str(tmp_path / "out"), "--runs-table": str(tmp_path / "r")})


def test_jobs_refuse_overlapping_paths_before_touching_anything(spark, cli, tmp_path):
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(src / f"{i}.png")
    before = sorted(p.name for p in src.iterdir())
    code, _, err = cli("ingest", "--source", tmp_path / "src", "--output", tmp_path / "src", "--mode", "overwrite")
    assert code == 2 and "is the input --source" in err and sorted(p.name for p in src.iterdir()) == before
    # the runs table given as the output: the run history would go with an overwrite
    from pipeline.cli import main
    code = main(["ingest", "--source", str(tmp_path / "src"), "--output", str(tmp_path / "runs"),
                 "--runs-table", str(tmp_path / "runs")])
    assert code == 2
    # a folder that is not one of ours is never replaced, with or without --mode overwrite
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    code, _, err = cli("ingest", "--source", tmp_path / "src", "--output", tmp_path / "theirs", "--mode", "overwrite")
    assert code == 2 and "was not written by sparkgan" in err
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob("theirs.__*"))
    # --checkpoint-dir: the input table's parent would be deleted by a fresh start
    assert cli("ingest", "--source", tmp_path / "src", "--output", tmp_path / "ds")[0] == 0
    code, _, err = cli("train_digits", "--engine", "torch", "--input", tmp_path / "ds" / "images", "--output",
                       tmp_path / "lenet", "--checkpoint-dir", tmp_path / "ds")
    assert code == 2 and "--checkpoint-dir" in err and "holds the input --input" in err
    assert (tmp_path / "ds" / "images").is_dir()


def test_markers_guard_every_delete(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "f").write_text("x")
    with pytest.raises(PipelineError, match="was not written by sparkgan"):
        safety.fresh_folder(str(theirs), "--checkpoint-dir", "t", "t-1")
    assert (theirs / "f").exists()
    (tmp_path / "empty").mkdir()
    safety.fresh_folder(str(tmp_path / "empty"), "--checkpoint-dir", "t", "t-1")  # nothing to lose
    safety.fresh_folder(str(tmp_path / "empty"), "--checkpoint-dir", "t", "t-2")  # ours now: replaced
    assert json.loads((tmp_path / "empty" / safety.MARKER).read_text())["run_id"] == "t-2"
    (tmp_path / "dst").mkdir()
    (tmp_path / "src").mkdir()
    with pytest.raises(FileExistsError):
        safety.rename_noreplace(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert (tmp_path / "src").is_dir() and (tmp_path / "dst").is_dir()


def test_mode_error_holds_at_the_commit(spark, cli, tmp_path, monkeypatch):
    """An output created by someone else while the job runs is never replaced; the result stays in
    the temporary folder the message names."""
    from pipeline import ingest

    out = tmp_path / "ds"
    real = ingest.decode_into

    def meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        out.mkdir()
        (out / "theirs.txt").write_text("written meanwhile")
        return result

    monkeypatch.setattr(ingest, "decode_into", meanwhile)
    code, _, err = cli("ingest", "--source", "digits", "--output", out, "--partitions", 2)
    assert code == 2 and "appeared while the job ran" in err
    assert sorted(os.listdir(out)) == ["theirs.txt"]
    (kept,) = tmp_path.glob("ds.__tmp_*")
    assert str(kept) in err and pq.read_table(kept / "images").num_rows == 1797


# ---------------------------------------------------------------- one writer at a time

def test_a_live_lease_stops_a_second_writer_and_a_dead_one_is_taken_over(tmp_path):
    target = str(tmp_path / "out")
    first = safety.Lease(target, "ingest-20261201T000000-aaaaaa", "--output").acquire()
    with pytest.raises(PipelineError, match=r"--output .*out is being written by run ingest-20261201T000000-aaaaaa "
                                            rf"\(pid {os.getpid()} on {socket.gethostname()}"):
        safety.Lease(target, "ingest-20261201T000001-bbbbbb", "--output").acquire()
    first.release()
    assert not os.path.exists(target + safety.LEASE_SUFFIX)
    # a holder whose process is gone (a killed run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(target + safety.LEASE_SUFFIX, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "run_id": "ingest-20261201T000002-cccccc",
                   "started": "then", "renewed": time.time()}, fh)
    second = safety.Lease(target, "ingest-20261201T000003-dddddd", "--output").acquire()
    assert second.taken_from.run_id == "ingest-20261201T000002-cccccc"
    assert safety.lease_holder(target).run_id == "ingest-20261201T000003-dddddd"
    second.release()
    # a killed holder not yet reaped (a zombie: kill(pid, 0) still succeeds) holds nothing either
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while safety._process_stat(zombie.pid)[0] != "Z":
        time.sleep(0.05)
    with open(target + safety.LEASE_SUFFIX, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": zombie.pid, "run_id": "ingest-20261201T000004-ffffff",
                   "started": "then", "renewed": time.time()}, fh)
    assert safety.lease_holder(target) is None
    zombie.wait()
    # another host's lease lives while it is renewed
    for renewed, alive in ((time.time(), True), (time.time() - 2 * safety.LEASE_TTL_S, False)):
        with open(target + safety.LEASE_SUFFIX, "w") as fh:
            json.dump({"host": "elsewhere", "pid": 1, "run_id": "x-20261201T000004-eeeeee", "started": "then",
                       "renewed": renewed}, fh)
        assert (safety.lease_holder(target) is not None) == alive


def test_recover_cleans_dead_runs_and_restores_an_interrupted_overwrite(tmp_path):
    out = tmp_path / "ds"
    dead_tmp = tmp_path / "ds.__tmp_ingest-20261201T000000-aaaaaa"
    safety.write_marker(str(dead_tmp), "ingest", "ingest-20261201T000000-aaaaaa")
    stranger = tmp_path / "ds.__tmp_ingest-20261201T000000-bbbbbb"  # no marker: not provably ours
    stranger.mkdir()
    old = tmp_path / "ds.__old_ingest-20261201T000001-cccccc"  # killed between the two renames
    safety.write_marker(str(old), "ingest", "x")
    (old / "images").mkdir()
    dead = safety.recover(str(out), "--output")
    assert dead == {"ingest-20261201T000000-aaaaaa", "ingest-20261201T000001-cccccc"}
    assert not dead_tmp.exists() and stranger.is_dir() and (out / "images").is_dir() and not old.exists()


@pytest.mark.slow
def test_two_writers_race_and_a_killed_run_leaves_nothing_behind(tmp_path):
    """Two real processes: the second writer of an output stops, naming the first; the first is then
    killed mid-write (its whole process tree); the next run takes its lease over, removes what it left,
    and the runs table shows it as abandoned."""
    src, out, runs = tmp_path / "src", tmp_path / "ds", tmp_path / "runs"
    rng = np.random.default_rng(3)
    for i in range(1500):
        (src / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(src / f"c{i % 3}" / f"{i}.png")
    args = [sys.executable, "-m", "pipeline", "ingest", "--source", str(src), "--output", str(out), "--partitions",
            "2", "--runs-table", str(runs)]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    lease = tmp_path / f"ds{safety.LEASE_SUFFIX}"
    deadline = time.time() + 120
    while not list(tmp_path.glob("ds.__tmp_*/_inputs")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lease.exists() and first.poll() is None
    # frozen mid-write (its whole tree), so that it is still writing whatever the second one's start
    # costs on a busy machine; the kill below ends it like a lost machine
    signal_tree(first, signal.SIGSTOP)
    holder = json.loads(lease.read_text())
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is being written by run {holder['run_id']} (pid {holder['pid']}" in second.stderr
    kill_tree(first)
    assert list(tmp_path.glob("ds.__tmp_*")) and not out.exists()
    assert [r["status"] for r in pq.read_table(runs).to_pylist()] == ["running"]

    third = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lease of run {holder['run_id']}" in third.stderr
    assert f"left by run {holder['run_id']}, which died" in third.stderr
    assert not list(tmp_path.glob("ds.__*")) and not lease.exists()
    assert pq.read_table(out / "images").num_rows == 1500
    rows = {r["run_id"]: r for r in pq.read_table(runs).to_pylist()}
    assert rows[holder["run_id"]]["status"] == "abandoned" and "cleaned up by run" in rows[holder["run_id"]]["error"]
    assert sorted(r["status"] for r in rows.values()) == ["abandoned", "succeeded"]
    shown = subprocess.run([sys.executable, "-m", "pipeline.runs", str(runs)], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert "abandoned" in shown and "succeeded" in shown


# ---------------------------------------------------------------- hostile inputs are rows

def _png_header(width, height) -> bytes:
    """A PNG that announces width x height 8-bit gray pixels (what a decompression bomb looks like
    before its pixels are inflated)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decoder_checks_format_and_pixels_before_decoding():
    with pytest.raises(im.DecodeError, match=r"^image too large: 13000x13000 is 169,000,000 pixels, over --max-pixels"):
        im.decode_image(_png_header(13000, 13000))
    import io
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="TIFF")
    with pytest.raises(im.DecodeError, match=r"^format TIFF is not one ingest reads \(expected JPEG, PNG, BMP"):
        im.decode_image(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(buf, format="PNG")
    assert im.decode_image(buf.getvalue(), max_pixels=30).shape == (5, 6)
    with pytest.raises(im.DecodeError, match="5x6|6x5"):
        im.decode_image(buf.getvalue(), max_pixels=29)
    assert im.max_file_bytes(10) == 40 + (16 << 20)


def test_hostile_inputs_become_rejected_rows(spark, cli, tmp_path):
    root = tmp_path / "src"
    for c in ("c0", "c1", "c2"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / c / f"{i}.png")
    with open(os.path.join(os.fsencode(root / "c1"), b"bad\xff.png"), "wb") as fh:
        fh.write((root / "c0" / "0.png").read_bytes())
    os.symlink("..", root / "c0" / "loop")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "c0" / "out.png")
    os.symlink(root / "nope.png", root / "c1" / "broken.png")
    os.symlink(root / "c0" / "1.png", root / "c2" / "alias.png")  # a link inside the source: an image
    os.mkfifo(root / "c2" / "pipe.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "c2" / "scan.tif")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / "c2" / "huge.png")
    (root / "c0" / ".DS_Store").write_bytes(b"\x00")
    (root / "_meta").mkdir()
    (root / "_meta" / "x.png").write_bytes(b"\x00")
    code, stdout, err = cli("ingest", "--source", root, "--output", tmp_path / "ds", "--max-pixels", 500)
    assert code == 0, err
    rejected = {r.path[len(f"file:{root}/"):]: r.reason for r in spark.read.parquet(f"{tmp_path}/ds/rejected").collect()}
    assert rejected == {
        "c1/bad\\xff.png": "file name is not valid UTF-8 (shown with \\x escapes)",
        "c0/loop": "symbolic link to a folder listed already (a loop or a second way in)",
        "c0/out.png": f"symbolic link to {tmp_path}/outside.png, outside the source",
        "c1/broken.png": "broken symbolic link",
        "c2/pipe.png": "not a regular file (a FIFO, socket or device)",
        "c2/scan.tif": "format TIFF is not one ingest reads (expected JPEG, PNG, BMP, GIF, WEBP)",
        "c2/huge.png": "image too large: 30x30 is 900 pixels, over --max-pixels 500"}
    images = spark.read.parquet(f"{tmp_path}/ds/images")
    assert images.count() == 7 and images.where("path like '%alias.png'").count() == 1
    run = pq.read_table(tmp_path / "runs").to_pylist()[-1]
    assert (run["rows_in"], run["rows_out"], run["rows_rejected"]) == (14, 7, 7)
    assert dict(run["metrics"])["skipped_hidden"] == 2 and "hidden_files   2" in stdout


def test_upscale_rejects_images_too_small_to_score(spark, cli, tmp_path):
    _srgan_generator(tmp_path / "g")
    rows = []
    for name, side in (("small", 12), ("fine", 24)):
        h, w, c, mode, data = im.array_to_row(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8))
        rows.append({"path": name, "origin": name, "label": None, "label_index": None, "height": h, "width": w,
                     "nChannels": c, "mode": mode, "data": data, "split": "test"})
    import pyarrow as pa
    pq.write_to_dataset(pa.Table.from_pylist(rows), str(tmp_path / "t"), partition_cols=["split"])
    code, _, err = cli("upscale", "--generator", tmp_path / "g", "--input", tmp_path / "t", "--output", tmp_path / "u")
    assert code == 0, err
    assert [r.path for r in spark.read.parquet(f"{tmp_path}/u/images").collect()] == ["fine"]
    (bad,) = spark.read.parquet(f"{tmp_path}/u/rejected").collect()
    assert (bad.path, bad.stage) == ("small", "upscale") and "12x12 is too small" in bad.reason
    run = pq.read_table(tmp_path / "runs").to_pylist()[-1]
    assert (run["rows_in"], run["rows_out"], run["rows_rejected"]) == (2, 1, 1)


def test_train_gan_records_the_rows_it_cannot_train_on(spark, cli, tmp_path):
    import pyarrow as pa

    table = digits_table(tmp_path / "digits", 64, 8)
    odd = [{"path": "broken", "origin": None, "label": None, "label_index": None, "height": 8, "width": 8,
            "nChannels": 1, "mode": 0, "data": b"\x00" * 10, "split": "train"},
           {"path": "big", "origin": None, "label": None, "label_index": None, "height": 10, "width": 10,
            "nChannels": 1, "mode": 0, "data": b"\x00" * 100, "split": "train"}]
    pq.write_to_dataset(pa.Table.from_pylist(odd), table, partition_cols=["split"])
    code, _, err = cli("train_gan", "--model", "dcgan", "--input", table, "--output", tmp_path / "dc", "--steps", 3,
                       "--batch-size", 16, "--num-processes", 1, "--local-mode", "on", "--max-pixels", 80)
    assert code == 0, err
    reasons = {r.path: (r.reason, r.stage) for r in spark.read.parquet(f"{tmp_path}/dc/rejected").collect()}
    assert reasons == {"broken": ("undecodable image row: data has 10 bytes, expected 64 for 8x8x1", "train"),
                       "big": ("image too large: 10x10 is 100 pixels, over --max-pixels 80", "train")}
    run = pq.read_table(tmp_path / "runs").to_pylist()[-1]
    assert (run["status"], run["rows_in"], run["rows_out"], run["rows_rejected"]) == ("succeeded", 66, 64, 2)
