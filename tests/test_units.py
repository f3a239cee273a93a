"""Unit tests of the pure-Python core, no Spark: each pins a value known independently of the code
(worked out by hand, or a format's own definition) or a message a user reads. Written against the
mutants `make mutation` left alive (README, Mutation testing); keep this file Spark-free and fast."""

import argparse
import hashlib
import io
import os
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline import config as cfg
from pipeline import images as im
from pipeline import options
from pipeline.errors import PipelineError
from pipeline.ingest import origin_of, parse_size, parse_split, split_of
from pipeline.io import Run, absolute, arrow_uri, check_writable, is_local, local_path
from pipeline.metrics import accuracy, metric_rows, psnr_y, ssim_y

# ---------------------------------------------------------------- images


def _encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_array_to_row_refuses_what_the_image_schema_cannot_hold():
    with pytest.raises(im.DecodeError, match=r"^expected uint8 pixels, got float64$"):
        im.array_to_row(np.zeros((2, 2, 3)))
    with pytest.raises(im.DecodeError, match=r"^unsupported channel count 2$"):
        im.array_to_row(np.zeros((2, 2, 2), np.uint8))


def test_row_to_array_names_the_byte_count_it_got_and_wanted():
    with pytest.raises(im.DecodeError, match=r"^data has 5 bytes, expected 12 for 2x2x3$"):
        im.row_to_array(2, 2, 3, bytes(5))
    with pytest.raises(im.DecodeError, match=r"^data has 0 bytes, expected 4 for 1x4x1$"):
        im.row_to_array(1, 4, 1, None)
    assert im.row_to_array(1, 2, 3, bytes([3, 2, 1, 6, 5, 4])).tolist() == [[[1, 2, 3], [4, 5, 6]]]  # BGR → RGB


def test_to_gray_keeps_black_black_and_white_white():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255, ]]], np.uint8)
    # BT.601: red 0.299 * 255 = 76.2, blue 0.114 * 255 = 29.1
    assert im.to_gray(rgb).tolist() == [[0, 255, 76, 29]]
    rgba = np.concatenate([rgb, np.full((1, 4, 1), 7, np.uint8)], axis=2)
    assert im.to_gray(rgba).tolist() == [[0, 255, 76, 29]]  # alpha dropped


def test_to_rgb_repeats_gray_and_drops_alpha():
    gray = np.array([[[5], [9]]], np.uint8)
    assert im.to_rgb(gray).tolist() == [[[5, 5, 5], [9, 9, 9]]]
    rgba = np.array([[[1, 2, 3, 4]]], np.uint8)
    out = im.to_rgb(rgba)
    assert out.tolist() == [[[1, 2, 3]]] and out.flags["C_CONTIGUOUS"]


def test_resize_array_is_bilinear_and_leaves_a_right_sized_array_alone():
    row = np.array([[0, 255]], np.uint8)
    # 2 → 4 pixels: output centres fall at -0.25, 0.25, 0.75, 1.25 source pixels; linear
    # interpolation (edges clamped) gives 0, 63.75, 191.25, 255 (bicubic would give 0, 53, 202, 255)
    assert im.resize_array(row, (1, 4)).tolist() == [[0, 64, 191, 255]]
    assert im.resize_array(row, (2, 2)).tolist() == [[0, 255], [0, 255]]
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert im.resize_array(rgb, (2, 3)) is rgb and im.resize_array(rgb, None) is rgb
    assert im.resize_array(rgb, (4, 6)).shape == (4, 6, 3)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_8bit_modes_pass_through(mode):
    img = Image.new(mode, (2, 1))
    assert im._to_8bit(img) is img


def test_bilevel_becomes_gray_0_and_255():
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 255]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_gray_is_scaled_by_1_over_257(mode):
    # 65535 / 255 = 257: v → round(v / 257); 25828 / 257 = 100.498, 32768 / 257 = 127.502,
    # 65407 / 257 = 254.502
    values = [0, 257, 25828, 32768, 65407, 65535]
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 1, 100, 128, 255, 255]]
    dark = Image.new(mode, (2, 1))  # a 16-bit image is on the 16-bit scale whatever its content
    dark.putpixel((1, 0), 255)
    assert np.asarray(im._to_8bit(dark)).tolist() == [[0, 1]]


def test_32bit_gray_is_kept_up_to_255_and_scaled_as_16bit_beyond():
    small = Image.new("I", (4, 1))
    for x, v in enumerate([0, 3, 200, 255]):
        small.putpixel((x, 0), v)
    assert np.asarray(im._to_8bit(small)).tolist() == [[0, 3, 200, 255]]
    big = Image.new("I", (4, 1))
    for x, v in enumerate([256, 25828, 65535, 70000]):  # max > 255: v / 257, clipped to 255
        big.putpixel((x, 0), v)
    assert np.asarray(im._to_8bit(big)).tolist() == [[1, 100, 255, 255]]
    just_over = Image.new("I", (2, 1))
    just_over.putpixel((1, 0), 256)  # 256 / 257 = 0.996
    assert np.asarray(im._to_8bit(just_over)).tolist() == [[0, 1]]


def test_float_gray_is_rounded_and_clipped():
    img = Image.fromarray(np.array([[-5.0, 0.4, 100.6, 255.0]], np.float32))
    assert img.mode == "F"
    out = im._to_8bit(img)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 0, 101, 255]]


def test_alpha_and_transparent_palettes_become_rgba_others_rgb():
    la = Image.new("LA", (1, 1), (9, 200))
    assert np.asarray(im._to_8bit(la)).tolist() == [[[9, 9, 9, 200]]]
    pa = Image.new("PA", (1, 1), (1, 100))
    pa.putpalette([10, 20, 30, 40, 50, 60])
    assert np.asarray(im._to_8bit(pa)).tolist() == [[[40, 50, 60, 100]]]
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255])
    p.putpixel((1, 0), 1)
    assert np.asarray(im._to_8bit(p)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    p.info["transparency"] = 0  # palette entry 0 is see-through
    assert np.asarray(im._to_8bit(p)).tolist() == [[[255, 0, 0, 0], [0, 0, 255, 255]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no black, full magenta and yellow: red
    out = im._to_8bit(cmyk)
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[255, 0, 0]]]


def test_decode_image_reads_what_was_written():
    rgb = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.uint8)
    assert im.decode_image(_encoded(Image.fromarray(rgb))).tolist() == rgb.tolist()
    sixteen = Image.new("I;16", (2, 1))
    sixteen.putpixel((1, 0), 65535)
    assert im.decode_image(_encoded(sixteen)).tolist() == [[0, 255]]


def test_decode_image_resizes_to_height_by_width_bilinear():
    row = Image.fromarray(np.array([[0, 255]], np.uint8))
    assert im.decode_image(_encoded(row), resize=(1, 4)).tolist() == [[0, 64, 191, 255]]
    tall = Image.fromarray(np.zeros((6, 2), np.uint8))
    assert im.decode_image(_encoded(tall), resize=(3, 5)).shape == (3, 5)
    assert im.decode_image(_encoded(tall), resize=(6, 2)).shape == (6, 2)
    square = Image.fromarray(np.zeros((4, 4), np.uint8))
    assert im.decode_image(_encoded(square), resize=(2, 4)).shape == (2, 4)


def test_decode_errors_read_as_reasons(monkeypatch):
    png = _encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    cases = {b"": "empty file (0 bytes)", b"hello": "not an image PIL can decode (unrecognised format)",
             png[:300]: "truncated image: image file is truncated",
             png[:60] + bytes(40) + png[100:]: "corrupt image: broken data stream when reading image file"}
    for content, reason in cases.items():
        with pytest.raises(im.DecodeError) as exc:
            im.decode_image(content)
        assert str(exc.value) == reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 100 pixels > twice the limit: a "bomb"
    with pytest.raises(im.DecodeError, match=r"^image too large: Image size \(100 pixels\) exceeds limit of 20"):
        im.decode_image(_encoded(Image.new("L", (10, 10))))


def test_a_decoder_error_without_a_message_is_named_by_its_type(monkeypatch):
    def fails(_):
        raise EOFError()
    monkeypatch.setattr(Image, "open", fails)
    with pytest.raises(im.DecodeError, match=r"^corrupt image: EOFError$"):
        im.decode_image(b"x")


# ---------------------------------------------------------------- metrics


def test_psnr_of_gray_images_one_level_apart():
    a = np.full((24, 24), 100, np.uint8)
    # MSE 1 on the gray values themselves: 10 log10(255^2) = 48.1308...
    assert psnr_y(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-9)
    assert psnr_y(a[:, :, None], a[:, :, None] + 1) == pytest.approx(48.1308036, abs=1e-6)
    assert ssim_y(a, a) == pytest.approx(1.0)


def test_identical_images_give_infinite_psnr_without_a_warning():
    a = np.full((12, 12, 3), 9, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr_y(a, a) == float("inf")


def test_accuracy_and_metric_rows():
    assert accuracy(np.array([[3, 1], [0, 4]])) == 0.875
    assert accuracy(np.zeros((3, 3), np.int64)) == 0.0 and accuracy(np.array([[1, 0], [0, 0]])) == 1.0
    rows = metric_rows("run-1", [(np.int64(3), "loss", np.float32(0.5)), (4, "psnr", 30)])
    assert rows == [("run-1", 3, "loss", 0.5), ("run-1", 4, "psnr", 30.0)]
    assert [(type(r[1]), type(r[3])) for r in rows] == [(int, float), (int, float)]


# ---------------------------------------------------------------- ingest options and split


def test_parse_split_accepts_spaces_and_refuses_with_the_reason():
    assert parse_split("train=0.8, test=0.2") == (("train", 0.8), ("test", 0.2))
    assert parse_split("val=1") == (("val", 1.0),)
    pairs = ("expected name=fraction pairs such as train=0.8,test=0.2 (names: train, test, val; "
             "fractions in (0, 1])")
    for text in ("train=x", "train=1.5", "train=0", "test=0.5,train=-0.5"):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse_split(text)
        assert str(exc.value) == f"bad split {text!r}: {pairs}"
    for text in ("train=0.5,train=0.5", "train=0.5,test=0.4"):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse_split(text)
        assert str(exc.value) == f"bad split {text!r}: names must be distinct and fractions sum to 1"


def test_parse_size_refuses_zero_and_junk():
    assert parse_size(" 32 ") == (32, 32) and parse_size("224x112") == (224, 112)
    for text in ("0", "0x5", "5x0", "abc", "5x", "x5", "-3"):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse_size(text)
        assert str(exc.value) == f"bad size {text!r}: expected N or HxW, e.g. 32 or 224x224"


def test_a_key_past_the_rounded_fractions_goes_to_the_last_split():
    split = parse_split("train=0.5,val=0.2,test=0.2999995")  # sums to 1 - 5e-7: within the tolerance
    key = "img164299"  # its hash lands in the last 5e-7 of [0, 1), past every fraction
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0 ** 64
    assert u > 0.9999995
    assert split_of(key, split) == "test"


def test_origin_of_spells_local_files_as_the_image_source_does():
    assert origin_of("file:/data/a.png") == "file:///data/a.png"
    for same in ("file:///data/a.png", "/data/a.png", "hdfs://nn/data/a.png", "file:a.png", "bundled:mnist/1"):
        assert origin_of(same) == same


# ---------------------------------------------------------------- paths and outputs


def test_absolute_and_arrow_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert absolute("out/x") == str(tmp_path / "out" / "x")
    for uri in ("s3a://bucket/x", "hdfs://nn:8020/x", "file:/x", "gs://b/x"):
        assert absolute(uri) == uri
    assert arrow_uri("s3a://bucket/t") == "s3://bucket/t" and arrow_uri("s3n://bucket/t") == "s3://bucket/t"
    assert arrow_uri("s3://bucket/t") == "s3://bucket/t" and arrow_uri("hdfs://nn/t") == "hdfs://nn/t"
    assert arrow_uri("gs://b/s3a://x") == "gs://b/s3a://x"
    assert arrow_uri("t") == str(tmp_path / "t")


def test_is_local_and_local_path():
    for path in ("/data/x", "data/x", "file:/data/x", "file:///data/x"):
        assert is_local(path)
    for path in ("hdfs://nn/x", "s3a://b/x"):
        assert not is_local(path)
    assert local_path("file:/data/x") == "/data/x" and local_path("file:///data/x") == "/data/x"
    assert local_path("/data/file:/x") == "/data/file:/x" and local_path("data/x") == "data/x"


def test_check_writable(tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "out"
    check_writable(str(out), "error")
    assert (tmp_path / "a" / "b").is_dir() and not out.exists()  # the parent is made, not the output
    out.mkdir()
    with pytest.raises(PipelineError) as exc:
        check_writable(str(out), "error")
    assert str(exc.value) == f"--output {out} already exists (use --mode overwrite to replace it)"
    with pytest.raises(PipelineError, match="already exists"):
        check_writable(f"file://{out}", "error")
    check_writable(str(out), "overwrite")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(PipelineError) as exc:
        check_writable(str(tmp_path / "f" / "sub" / "out"), "error")
    assert str(exc.value) == (f"--output {tmp_path / 'f' / 'sub' / 'out'}: cannot create {tmp_path / 'f' / 'sub'} "
                              "(Not a directory)")
    check_writable("hdfs://nn/never/checked", "error")  # remote: Hadoop decides at commit time
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)
    with pytest.raises(PipelineError) as exc:
        check_writable(str(tmp_path / "c" / "out"), "error")
    assert str(exc.value) == f"--output {tmp_path / 'c' / 'out'}: {tmp_path / 'c'} is not writable"


def test_row_accounting_balances_written_and_rejected_rows():
    for rows_in, out, rejected in ((3, 2, 1), (2, None, 2), (2, 0, 2), (4, 4, None), (4, 4, 0), (0, 0, 0)):
        Run(job="t", config={}, rows_in=rows_in, rows_out=out, rows_rejected=rejected).check_counts()
    Run(job="t", config={}).check_counts()  # nothing recorded: nothing to balance
    for rows_in, out, rejected in ((5, 3, 1), (1, None, 2), (3, 4, None), (None, 1, 0)):
        with pytest.raises(PipelineError) as exc:
            Run(job="t", config={}, rows_in=rows_in, rows_out=out, rows_rejected=rejected).check_counts()
        assert str(exc.value) == (f"row accounting failed: read {rows_in}, wrote {out}, rejected {rejected}; "
                                  "nothing was committed")


# ---------------------------------------------------------------- shared options


def test_positive_checks_every_name():
    opts = SimpleNamespace(num_processes=1, batch_size=0)
    options.positive(opts, "num_processes")
    with pytest.raises(PipelineError) as exc:
        options.positive(opts, "num_processes", "batch_size")
    assert str(exc.value) == "--batch-size 0: expected a positive number"


def test_check_distributor():
    ok = SimpleNamespace(num_processes=2, threads=0, batch_size=64)
    options.check_distributor(ok)
    cases = {(0, 0, 64): "--num-processes 0: expected a positive number",
             (2, -1, 64): "--threads -1: expected 0 (Spark's cores / --num-processes) or more",
             (3, 2, 64): "--batch-size 64 does not split evenly over --num-processes 3"}
    for (n, threads, batch), message in cases.items():
        with pytest.raises(PipelineError) as exc:
            options.check_distributor(SimpleNamespace(num_processes=n, threads=threads, batch_size=batch))
        assert str(exc.value) == message


def test_threads_per_process():
    spark = SimpleNamespace(sparkContext=SimpleNamespace(defaultParallelism=8))
    assert options.threads_per_process(spark, SimpleNamespace(threads=0, num_processes=3)) == 2
    assert options.threads_per_process(spark, SimpleNamespace(threads=5, num_processes=3)) == 5
    assert options.threads_per_process(spark, SimpleNamespace(threads=0, num_processes=9)) == 1


def test_input_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    assert options.input_table("ds") == str(tmp_path / "ds")
    assert options.input_table(f"file:{tmp_path}/ds") == f"file:{tmp_path}/ds"
    assert options.input_table("s3a://bucket/ds") == "s3a://bucket/ds"  # remote: Spark checks it
    with pytest.raises(PipelineError) as exc:
        options.input_table("nope")
    assert str(exc.value) == f"--input {tmp_path / 'nope'}: no such images table"
    with pytest.raises(PipelineError) as exc:
        options.input_table(f"file:{tmp_path}/nope", "--generator", "model", " (train one first)")
    assert str(exc.value) == f"--generator file:{tmp_path}/nope: no such model (train one first)"
    (tmp_path / "f").write_text("a file, not a table")
    with pytest.raises(PipelineError, match="no such images table"):
        options.input_table("f")


def test_output_is_made_absolute_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = SimpleNamespace(output="sub/out", mode="error")
    options.output(opts)
    assert opts.output == str(tmp_path / "sub" / "out") and (tmp_path / "sub").is_dir()
    (tmp_path / "sub" / "out").mkdir()
    with pytest.raises(PipelineError, match="already exists"):
        options.output(SimpleNamespace(output="sub/out", mode="error"))
    options.output(SimpleNamespace(output="sub/out", mode="overwrite"))


def test_resume_decision():
    assert options.resume_decision("off", "ck/epoch-3", {}, {}) == (False, "starting fresh")
    assert options.resume_decision("off", None, {}, {}) == (False, "starting fresh")
    for mode in ("on", "auto"):
        assert options.resume_decision(mode, None, {}, {"lr": 1}) == (False, "starting fresh (no checkpoint yet)")
        assert options.resume_decision(mode, "ck/epoch-3", {"lr": 0.1}, {"lr": 0.1}) == \
            (True, "resuming from ck/epoch-3")
    saved = {"lr": 0.1, "model": "dcgan", "old": 1}
    current = {"lr": 0.2, "model": "dcgan", "batch": 8}
    what = "batch None → 8, lr 0.1 → 0.2, old 1 → None"
    assert options.resume_decision("auto", "ck/epoch-3", saved, current) == \
        (False, f"starting fresh: the checkpoint ck/epoch-3 is of another configuration ({what})")
    with pytest.raises(PipelineError) as exc:
        options.resume_decision("on", "ck/epoch-3", saved, current)
    assert str(exc.value) == (f"--resume: the checkpoint ck/epoch-3 is of another configuration ({what}); "
                              "use --resume auto to start fresh instead")
    assert options.resume_decision("auto", "ck", {"model": "dcgan"}, {"model": "srgan"})[1] == \
        "starting fresh: the checkpoint ck is of another configuration (model 'dcgan' → 'srgan')"


# ---------------------------------------------------------------- profiles


def test_conf_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKGAN_CONF_DIR", str(tmp_path / "env"))
    assert cfg.conf_dir() == tmp_path / "env"
    monkeypatch.delenv("SPARKGAN_CONF_DIR")
    # the installed wheel: <site-packages>/pipeline/conf
    (tmp_path / "pkg" / "pipeline" / "conf").mkdir(parents=True)
    (tmp_path / "pkg" / "pipeline" / "conf" / "local.yaml").write_text("{}")
    monkeypatch.setattr(cfg, "__file__", str(tmp_path / "pkg" / "pipeline" / "config.py"))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "elsewhere" / "x.py")])
    assert cfg.conf_dir() == tmp_path / "pkg" / "pipeline" / "conf"
    # the package from a --py-files zip: conf/ beside the submitted jobs/ folder
    monkeypatch.setattr(cfg, "__file__", str(tmp_path / "zip" / "pipeline" / "config.py"))
    (tmp_path / "sub" / "conf").mkdir(parents=True)
    (tmp_path / "sub" / "conf" / "local.yaml").write_text("{}")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "sub" / "jobs" / "ingest.py"), "--x"])
    assert cfg.conf_dir() == tmp_path / "sub" / "conf"
    for argv in ([], [""], [str(tmp_path / "elsewhere" / "x.py")]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(PipelineError) as exc:
            cfg.conf_dir()
        assert str(exc.value) == "cannot find the conf/ folder; set SPARKGAN_CONF_DIR"


def test_load_profile_defaults_and_values(tmp_path, monkeypatch):
    (tmp_path / "local.yaml").write_text("")
    monkeypatch.setenv("SPARKGAN_CONF_DIR", str(tmp_path))
    profile = cfg.load_profile(None)
    assert (profile.path, profile.master, profile.runs_table, profile.spark, profile.jobs) == \
        (str(tmp_path / "local.yaml"), "local[*]", "out/runs", {}, {})
    (tmp_path / "p.yaml").write_text("master: yarn\nruns_table: 5\nspark: {spark.a: false, spark.b: true, "
                                     "spark.c: 2}\njobs: {ingest: 5, upscale: {partitions: 2}}\n")
    profile = cfg.load_profile(str(tmp_path / "p.yaml"), ["spark.x.opts=-Da=b", "spark.y = 1 "], job="ingest")
    assert (profile.path, profile.master, profile.runs_table) == (str(tmp_path / "p.yaml"), "yarn", "5")
    assert profile.spark == {"spark.a": "false", "spark.b": "true", "spark.c": "2", "spark.x.opts": "-Da=b",
                             "spark.y": "1"}
    assert profile.jobs == {"ingest": 5, "upscale": {"partitions": 2}}


def test_load_profile_refuses_with_the_reason(tmp_path):
    def refused(text, *overrides):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(PipelineError) as exc:
            cfg.load_profile(str(tmp_path / "p.yaml"), list(overrides))
        return str(exc.value)

    path = tmp_path / "p.yaml"
    assert refused("a: [") == f"--conf-file {path}: not valid YAML (ParserError)"
    assert refused("- 1\n- 2\n") == f"--conf-file {path}: expected a mapping at the top level"
    assert refused("master: x\nworkers: 2\nextra: 1\n") == \
        f"--conf-file {path}: unknown key(s) extra, workers (expected jobs, master, runs_table, spark, spark_defaults)"
    assert refused("spark: [1, 2]\n") == f"--conf-file {path}: 'spark' must be a mapping"
    assert refused("jobs: 3\n") == f"--conf-file {path}: 'jobs' must be a mapping"
    assert refused("jobs: {ingest: {spark: 3}}\n") == f"--conf-file {path}: 'jobs.ingest.spark' must be a mapping"
    for bad in ("spark.a", "a=1", "=1"):
        assert refused("{}", "spark.ok=1", bad) == f"--conf {bad!r}: expected spark.<key>=<value>"
    with pytest.raises(PipelineError) as exc:
        cfg.load_profile(str(tmp_path / "missing.yaml"))
    assert str(exc.value) == f"--conf-file {tmp_path / 'missing.yaml'}: no such file"


def test_read_spark_defaults_names_file_and_line(tmp_path):
    conf = tmp_path / "d.conf"
    for text, line in (("spark.a 1\n# c\nexecutor.memory 2g\n", "'executor.memory 2g'"),
                       ("spark.a 1\n\nspark.b\n", "'spark.b'")):
        conf.write_text(text)
        with pytest.raises(PipelineError) as exc:
            cfg.read_spark_defaults(str(conf))
        assert str(exc.value) == f"{conf}:3: expected 'spark.<key> <value>', got {line}"
    with pytest.raises(PipelineError) as exc:
        cfg.read_spark_defaults(str(tmp_path / "none.conf"))
    assert str(exc.value) == f"spark_defaults {tmp_path / 'none.conf'}: no such file"


def _parser():
    p = argparse.ArgumentParser()
    defaults = options.add_output(p, "where")
    p.add_argument("--partitions", type=int)
    p.add_argument("--batch-rows", type=int)
    p.add_argument("--split", type=parse_split)
    return p, {**defaults, "partitions": 4, "batch_rows": 256, "split": (("train", 1.0),)}


def _profile(jobs):
    return cfg.Profile(path="conf/p.yaml", jobs=jobs)


def test_resolve_options_layers_default_profile_and_command_line():
    p, defaults = _parser()
    args = cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({}), "ingest")
    assert (args.mode, args.partitions, args.batch_rows, args.split) == ("error", 4, 256, (("train", 1.0),))
    job = {"partitions": "8", "batch-rows": 16, "mode": "overwrite", "split": "train=0.5,test=0.5"}
    args = cfg.resolve_options(p.parse_args(["--output", "o", "--partitions", "2"]), p, defaults,
                               _profile({"ingest": job, "other": {"partitions": 99}}), "ingest")
    assert (args.mode, args.partitions, args.batch_rows, args.split) == \
        ("overwrite", 2, 16, (("train", 0.5), ("test", 0.5)))
    args = cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({"ingest": {"partitions": None}}),
                               "ingest")
    assert args.partitions == 4  # an empty YAML value leaves the built-in default


def test_resolve_options_checks_profile_values_as_the_command_line_does():
    p, defaults = _parser()

    def refused(section, job="ingest"):
        with pytest.raises(PipelineError) as exc:
            cfg.resolve_options(p.parse_args(["--output", "o"]), p, defaults, _profile({job: section}), job)
        return str(exc.value)

    assert refused(3) == "conf/p.yaml: jobs.ingest must be a mapping"
    assert refused({"partitions": 2, "workers": 1, "output2": 1}) == \
        ("conf/p.yaml: unknown option(s) jobs.ingest.output2, workers "
         "(expected one of batch_rows, mode, partitions, split)")
    assert refused({"partitions": "many"}) == \
        "conf/p.yaml: jobs.ingest.partitions='many': invalid literal for int() with base 10: 'many'"
    assert refused({"mode": "sideways"}) == "conf/p.yaml: jobs.ingest.mode='sideways': expected one of error, overwrite"
    assert refused({"split": "train=2"}).startswith("conf/p.yaml: jobs.ingest.split='train=2': bad split 'train=2'")


def test_workers_stop_zip_importers_rereading_archives_that_do_not_change(tmp_path, monkeypatch):
    """Spark 3.5's worker invalidates import caches before every task; on Python 3.11 each zip
    importer then re-reads its archive's directory (pyspark.zip, Spark's jars: ~0.1 s a task)."""
    import zipfile
    import zipimport

    from pipeline import workers

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_for_test.py", "X = 1\n")
    # restored after the test (tests that run worker functions in this process patch it too)
    monkeypatch.setattr(zipimport.zipimporter, "invalidate_caches", zipimport.zipimporter.invalidate_caches)
    real, reads = zipimport._read_directory, []
    monkeypatch.setattr(zipimport, "_read_directory", lambda path: reads.append(path) or real(path))
    importer = zipimport.zipimporter(str(archive))
    before = len(reads)
    workers.skip_zip_rereads()
    importer.invalidate_caches()
    assert len(reads) == before
    if sys.version_info < (3, 12):
        assert zipimport.zipimporter.invalidate_caches is workers._keep
    assert importer.find_spec("zipped_for_test") is not None
