import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.gan.models import DCGANGenerator, SRResNet
from pipeline.training_run import CheckpointFolder
from tests.conftest import ROOT, kill_tree


def test_model_shapes_and_bicubic_start():
    g = SRResNet(blocks=2, ch=16)
    lr = torch.rand(2, 3, 12, 12)
    out = g(lr)
    assert out.shape == (2, 3, 48, 48)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(out, bicubic)  # the residual starts at zero: training starts at bicubic
    assert DCGANGenerator()(torch.randn(3, 100, 1, 1)).shape == (3, 1, 32, 32)


def test_bad_gan_options(cli, tmp_path):
    code, _, err = cli("train_gan", "--input", tmp_path, "--output", tmp_path / "o")
    assert code == 2 and "split=train" in err
    (tmp_path / "t" / "split=train").mkdir(parents=True)
    code, _, err = cli("train_gan", "--input", tmp_path / "t", "--output", tmp_path / "o", "--batch-size", 63)
    assert code == 2 and "does not split evenly over --num-processes 2" in err
    code, _, err = cli("train_gan", "--input", tmp_path / "t", "--output", tmp_path / "o", "--resume")
    assert code == 2 and "--resume: no checkpoint" in err
    torch.save({"classifier.0.weight": torch.zeros(2)}, tmp_path / "notvgg.pth")
    code, _, err = cli("train_gan", "--model", "srgan", "--input", tmp_path / "t", "--output", tmp_path / "o",
                       "--vgg19-weights", tmp_path / "notvgg.pth")
    assert code == 2 and "not a torchvision VGG19 state dict" in err and len(err.strip().splitlines()) == 1


def _validated(job: str, *args):
    """A job's options as its validate() leaves them (no Spark)."""
    import importlib

    from pipeline.cli import JOBS, build_parser
    from pipeline.config import load_profile, resolve_options

    parser, parsers, defaults = build_parser()
    opts = resolve_options(parser.parse_args([job, *map(str, args)]), parsers[job], defaults[job], load_profile(None),
                           job)
    importlib.import_module(JOBS[job].module).validate(opts)
    return opts


def test_gan_jobs_take_remote_tables_and_check_their_generator(tmp_path):
    from pipeline.errors import PipelineError

    # the ranks read hdfs:// and s3a:// tables themselves; Spark checks them when the job runs
    assert _validated("train_gan", "--input", "hdfs://nn:8020/images", "--output", tmp_path / "o").input == \
        "hdfs://nn:8020/images"
    (tmp_path / "g").mkdir()
    torch.save({}, tmp_path / "g" / "generator.pt")
    (tmp_path / "g" / "generator.json").write_text(json.dumps({"model": "dcgan"}))
    with pytest.raises(PipelineError, match="a dcgan generator, not an SRResNet"):
        _validated("upscale", "--generator", tmp_path / "g", "--input", tmp_path, "--output", tmp_path / "o")
    (tmp_path / "g" / "generator.json").write_text(json.dumps({"model": "srgan"}))
    with pytest.raises(PipelineError, match="--tile -1"):
        _validated("upscale", "--generator", tmp_path / "g", "--input", tmp_path, "--output", tmp_path / "o",
                   "--tile", -1)
    opts = _validated("upscale", "--generator", tmp_path / "g", "--input", tmp_path, "--output", tmp_path / "o")
    assert (opts.tile, opts.precision, opts.batch_size) == (128, "bf16", 8)


def test_vgg19_features_load_a_torchvision_layout_state_dict(tmp_path):
    from pipeline.gan.models import VGG19_CFG, VGG19Features

    layers, c_in = [], 3  # torchvision's vgg19().features indices: conv, relu (, pool)
    for v in VGG19_CFG:
        layers += [torch.nn.MaxPool2d(2)] if v == "M" else [torch.nn.Conv2d(c_in, v, 3, padding=1), torch.nn.ReLU()]
        c_in = v if v != "M" else c_in
    torch.save({f"features.{k}": t for k, t in torch.nn.Sequential(*layers).state_dict().items()}, tmp_path / "v.pth")
    vgg = VGG19Features(str(tmp_path / "v.pth"))
    assert vgg(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)  # relu5_4: four 2x poolings
    assert not any(p.requires_grad for p in vgg.parameters())


@pytest.fixture(scope="module")
def datasets(spark, tmp_path_factory):
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("gan")  # the MNIST digits: the session's `mnist` fixture
    assert main(["ingest", "--source", "photos", "--output", str(root / "photos"), "--runs-table",
                 str(root / "runs")]) == 0
    return root


def _runs(path, job):
    rows = pq.read_table(path).to_pandas()
    return rows[rows.job == job].sort_values("started_at")


@pytest.mark.slow
@pytest.mark.default_stack
def test_srresnet_beats_bicubic_on_held_out_photos_and_upscale(spark, cli, datasets, tmp_path):
    photos = datasets / "photos" / "images"
    code, out, err = cli("train_gan", "--model", "srgan", "--input", photos, "--output", tmp_path / "sr",
                         "--steps", 100, "--pretrain-steps", 100, "--crop", 64, "--lr", 2e-4, "--checkpoint-every", 50)
    # SRResNet (content loss) steps only: held-out +0.48 dB over bicubic here (150 steps: +0.54)
    assert code == 0, err
    m = dict(_runs(tmp_path / "runs", "train_gan").iloc[-1].metrics)
    print("held-out PSNR (Y) SR %.2f dB vs bicubic %.2f dB" % (m["psnr_sr"], m["psnr_bicubic"]))
    assert m["psnr_sr"] > m["psnr_bicubic"]
    assert {"generator.pt", "generator.json", "loss_curves.png", "metrics", "sr_comparison_0.png"} <= set(
        os.listdir(tmp_path / "sr"))

    code, out, err = cli("upscale", "--generator", tmp_path / "sr", "--input", photos, "--output", tmp_path / "up",
                         "--split", "test")  # the held-out photos only: full-size 4x upscales are slow on CPUs
    assert code == 0, err
    up = spark.read.parquet(str(tmp_path / "up" / "images")).toPandas()
    assert len(up) == 5 and set(up.split) == {"test"} and up.psnr_sr.mean() > up.psnr_bicubic.mean()
    src = spark.read.parquet(str(photos)).where("path = 'bundled:photos/camera'").first()
    row = up[up.path == "bundled:photos/camera"].iloc[0]
    assert (row.height, row.width, row.nChannels, len(row.data)) == (src.height, src.width, 3, src.height * src.width * 3)


def _digit_classifier(spark, images):
    """A fixed LeNet-style digit classifier (PyTorch, 32x32, ~96% on the test split), trained here on
    the real digits. Dropout and weight decay keep it from being confident about noise."""
    from pipeline import images as im

    rows = spark.read.parquet(str(images)).where("split = 'train'").orderBy("path").toPandas()
    x = np.stack([im.resize_array(im.row_to_array(r.height, r.width, r.nChannels, r.data)[:, :, 0], (32, 32))
                  for r in rows.itertuples()]).astype(np.float32)[:, None] / 127.5 - 1
    y = torch.tensor(rows.label_index.to_numpy().astype(np.int64))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(16, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(800, 10))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    xs = torch.from_numpy(x)
    for _ in range(8):
        for i in torch.randperm(len(xs)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[i]), y[i]).backward()
            opt.step()
    return net.eval(), xs


@pytest.mark.slow
@pytest.mark.default_stack
def test_dcgan_samples_are_recognised_as_digits(spark, cli, mnist, tmp_path):
    images = mnist
    code, out, err = cli("train_gan", "--model", "dcgan", "--input", images, "--output", tmp_path / "dc",
                         "--steps", 500, "--checkpoint-every", 250)  # 0.30 of samples recognised here (800: 0.37)
    assert code == 0, err
    assert len(os.listdir(tmp_path / "dc" / "samples")) == 9  # one grid per epoch (62 steps at batch 64), the last
    g = DCGANGenerator(100, 32)
    g.load_state_dict(torch.load(tmp_path / "dc" / "generator.pt", weights_only=True))
    classifier, real = _digit_classifier(spark, images)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        candidates = {
            "DCGAN samples": g.eval()(torch.randn(512, 100, 1, 1, generator=gen)),
            "uniform noise": torch.rand(512, 1, 32, 32, generator=gen) * 2 - 1,
            # same pixel values as real digits, no structure
            "shuffled digits": real[:512].flatten(1)[:, torch.randperm(1024, generator=gen)].view(512, 1, 32, 32)}
        share = {k: float((torch.softmax(classifier(v), 1).max(1).values > 0.9).float().mean())
                 for k, v in candidates.items()}
    print("share labelled with >90% confidence: " + ", ".join(f"{k} {v:.3f}" for k, v in share.items()))
    assert share["DCGAN samples"] > 0.2
    assert share["DCGAN samples"] > max(share["uniform noise"], share["shuffled digits"]) + 0.15


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_layout(mnist, tmp_path):
    images = mnist
    args = [sys.executable, "-m", "pipeline", "train_gan", "--model", "dcgan", "--input", str(images),
            "--output", str(tmp_path / "dc"), "--steps", "250", "--checkpoint-every", "50", "--runs-table",
            str(tmp_path / "runs"), "--resume", "auto", "--mode", "overwrite"]  # what the DAG's every try runs
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    folder = CheckpointFolder(str(tmp_path / "dc.checkpoints"), "step")
    for _ in range(600):
        if (latest := folder.latest()) and latest.done >= 100:
            break
        time.sleep(0.2)
    kill_tree(proc)  # like a lost machine: driver, JVM, Python workers, torchrun and ranks at once
    ckpt = folder.latest()
    killed_at = ckpt.done
    assert torch.load(os.path.join(ckpt.folder, "checkpoint.pt"), weights_only=False)["step"] == killed_at
    assert 100 <= killed_at < 250 and not (tmp_path / "dc").exists()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)  # the retry
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {ckpt.folder} (step {killed_at} done)" in r.stderr  # the driver says so
    assert f"resuming dcgan from step {killed_at}" in r.stderr + r.stdout
    layout = sorted(os.listdir(tmp_path / "dc"))
    assert layout == ["_sparkgan.json", "generated", "generator.json", "generator.pt", "loss_curves.png", "metrics",
                      "rejected", "samples"]
    generated = pq.read_table(tmp_path / "dc" / "generated").to_pandas()
    assert len(generated) == 5 * 64 and sorted(set(generated.step)) == [62, 124, 186, 248, 250]
    assert (generated.height == 32).all() and (generated.data.map(len) == 32 * 32).all()
    assert len(os.listdir(tmp_path / "dc" / "samples")) == 5  # steps 62, 124, 186, 248 and the last
    steps = pq.read_table(tmp_path / "dc" / "metrics").to_pandas().query("name == 'loss_g'").step.tolist()
    assert sorted(steps) == list(range(50, 251, 50))  # no gap and no duplicate across the kill
    runs = _runs(tmp_path / "runs", "train_gan")
    assert json.loads(runs.iloc[-1].config)["resume"] == "auto" and runs.iloc[-1].status == "succeeded"
    assert dict(runs.iloc[-1].metrics)["resumed_from_step"] == killed_at
    # the killed try's `running` row, rewritten by the retry that took over its lease
    assert sorted(runs.status) == ["abandoned", "succeeded"] and runs.iloc[-1].status == "succeeded"
    assert "cleaned up by run" in runs[runs.status == "abandoned"].iloc[0].error

    # another shape (batch 32): its checkpoint is never used; the run starts over and says why
    r = subprocess.run([*args, "--batch-size", "32", "--steps", "20", "--checkpoint-every", "10"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting fresh: the checkpoint" in r.stderr and "batch_size 64 → 32" in r.stderr
    assert sorted(n for n in os.listdir(folder.path) if n.startswith("step-")) == ["step-000010", "step-000020"]


def test_upscale_keeps_the_colour_order(cli, tmp_path):
    """An image whose red, green and blue differ (a red ramp across, a blue ramp down): upscaled with
    an SRResNet that is the identity over bicubic (its last conv is zero, as a fresh one is), the
    output is the bicubic upscale of the same RGB image, read back through the images contract.
    A red/blue swap anywhere between the table and the network would show at once."""
    import torch.nn.functional as F

    from pipeline import images as im
    from pipeline.gan.models import SRResNet

    gen = tmp_path / "g"
    gen.mkdir()
    torch.save(SRResNet(1, 8, 4, True).state_dict(), gen / "generator.pt")
    (gen / "generator.json").write_text(json.dumps({"model": "srgan", "width": 8, "blocks": 1, "nz": 100,
                                                    "bicubic_skip": True}))
    h, w = 12, 16
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :, 0] = np.linspace(20, 235, w)[None, :]
    rgb[:, :, 1] = 90
    rgb[:, :, 2] = np.linspace(230, 30, h)[:, None]
    import pyarrow as pa

    from pipeline.schemas import IMAGE_FILE_SCHEMA

    (tmp_path / "t" / "split=test").mkdir(parents=True)
    row = ("colour", None, None, None, *im.array_to_row(rgb))
    pq.write_table(pa.Table.from_pylist([dict(zip(IMAGE_FILE_SCHEMA.names, row))], schema=IMAGE_FILE_SCHEMA),
                   tmp_path / "t" / "split=test" / "part-0.parquet")
    code, _, err = cli("upscale", "--generator", gen, "--input", tmp_path / "t", "--output", tmp_path / "up",
                       "--from-hr", "off", "--tile", 0)
    assert code == 0, err
    out = pq.read_table(tmp_path / "up" / "images").to_pylist()[0]
    got = im.row_to_array(out["height"], out["width"], out["nChannels"], out["data"])
    lr = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    want = (F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)[0]
            .permute(1, 2, 0).numpy() * 255)
    assert got.shape == (4 * h, 4 * w, 3)
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0  # rounding only
    assert got[:, -1, 0].mean() > got[:, 0, 0].mean() + 150 and got[-1, :, 2].mean() < got[0, :, 2].mean() - 150
