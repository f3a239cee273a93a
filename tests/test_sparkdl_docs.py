"""docs/sparkdl.md's examples run as written: every ```python block of the page, in order, in one namespace
with `spark` and `workdir`, with only the weights option changed (ImageNet weights cannot be downloaded here)."""

import os
import re

import pytest

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "sparkdl.md")


def blocks() -> list[str]:
    with open(DOC) as fh:
        return re.findall(r"^```python\n(.*?)^```$", fh.read(), flags=re.S | re.M)


def test_the_page_has_the_examples():
    code = "\n".join(blocks())
    for name in ("DeepImageFeaturizer", "LogisticRegression", "DeepImagePredictor", "decodePredictions=True",
                 "KerasImageFileTransformer", "imageLoader=", "registerKerasImageUDF", "spark.sql(",
                 "KerasImageFileEstimator", "CrossValidator", "ParamGridBuilder"):
        assert name in code, name
    assert code.count('weights="imagenet"') == 3


@pytest.mark.slow
@pytest.mark.default_stack
def test_sparkdl_examples_run_as_written(spark, tmp_path, capsys):
    from pyspark.ml import PipelineModel

    namespace = {"spark": spark, "workdir": str(tmp_path), "__name__": "sparkdl_docs"}
    for code in blocks():
        exec(compile(code.replace('weights="imagenet"', 'weights="random"'), DOC, "exec"), namespace)
    out = capsys.readouterr().out
    assert "Test set accuracy =" in out and "accuracy per learning rate:" in out

    predictions = namespace["predictions"]
    assert len(predictions) == 4 and all(len(r.predicted_labels) == 5 for r in predictions)
    assert all(re.fullmatch(r"n\d{8}", p["class"]) for r in predictions for p in r.predicted_labels)
    metrics = namespace["tuned"].stages[0].avgMetrics
    assert len(metrics) == 2 and all(0 <= m <= 1 for m in metrics)
    loaded = PipelineModel.load(str(tmp_path / "tuned"))  # with the pickled loader
    assert loaded.transform(namespace["uris"]).where("prediction IS NOT NULL").count() == 120
