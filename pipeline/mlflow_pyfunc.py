"""The pyfunc face of the project's models, for `mlflow.pyfunc.load_model` and `mlflow.pyfunc.spark_udf`.

MLflow loads this file as the model's code ("models from code"): no pickle is loaded, and the
weights are read by the project's own loaders (torch's weights_only), from the job's model folder
kept as the model's `model` artifact. Input and output are rows of the images contract:

* LeNet-5 (train_digits, torch engine): height, width, nChannels, data → prediction (int)
* SRResNet (train_gan --model srgan): an LR image's height, width, nChannels, data → the 4x image's
* DCGAN generator (train_gan --model dcgan): seed → a generated 32x32 image's height, width, nChannels, data
"""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd


def kind_of(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, "lenet5.pt")):
        return "lenet5"
    with open(os.path.join(folder, "generator.json")) as fh:
        return json.load(fh)["model"]


def _rows(images) -> pd.DataFrame:
    from pipeline import images as im

    rows = [im.array_to_row(a) for a in images]
    return pd.DataFrame({"height": [r[0] for r in rows], "width": [r[1] for r in rows],
                         "nChannels": [r[2] for r in rows], "data": [r[4] for r in rows]})


class SparkganModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        torch.set_num_threads(1)  # spark_udf runs one per task: one core each
        folder = context.artifacts["model"]
        self.kind = kind_of(folder)
        if self.kind == "lenet5":
            from pipeline.digits.torch_engine import load

            self.net = load(os.path.join(folder, "lenet5.pt"))
        elif self.kind == "srgan":
            from pipeline.gan.sr import load_generator

            self.net = load_generator(folder)
        else:
            from pipeline.gan.models import DCGANGenerator

            with open(os.path.join(folder, "generator.json")) as fh:
                meta = json.load(fh)
            self.nz = meta["nz"]
            self.net = DCGANGenerator(meta["nz"], meta["width"])
            self.net.load_state_dict(torch.load(os.path.join(folder, "generator.pt"), map_location="cpu",
                                                weights_only=True))
            self.net.eval()

    def predict(self, context, model_input: pd.DataFrame, params=None):
        import torch

        from pipeline import images as im

        if self.kind == "dcgan":
            z = torch.stack([torch.randn(self.nz, 1, 1, generator=torch.Generator().manual_seed(int(s)))
                             for s in model_input["seed"]])
            with torch.no_grad():
                out = ((self.net(z)[:, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            return _rows(list(out))
        cols = [model_input[c].tolist() for c in ("height", "width", "nChannels", "data")]
        if self.kind == "lenet5":
            from pipeline.digits import data

            x = np.stack([data.to_input(int(h), int(w), int(c), d) for h, w, c, d in zip(*cols)])
            with torch.no_grad():
                return self.net(torch.from_numpy(x)).argmax(1).numpy().astype(np.int32)
        from pipeline.gan.sr import super_resolve

        lr = [im.to_rgb(im.row_to_array(int(h), int(w), int(c), d)) for h, w, c, d in zip(*cols)]
        return _rows(super_resolve(self.net, lr, precision="fp32"))


mlflow.models.set_model(SparkganModel())
