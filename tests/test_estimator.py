import os

import numpy as np
import pytest
from PIL import Image

from pipeline.estimator import KerasImageFileEstimator, KerasImageFileModel
from pipeline.ingest import load_bundled

LEARNING_RATES = [1e-5, 0.03]


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory):
    """scikit-learn's 1,797 real 8x8 digits as PNG files: (train URIs+labels, test URIs+labels) DataFrames."""
    root = tmp_path_factory.mktemp("digits")
    arrays, labels = load_bundled("digits")
    rows = []
    for i, (arr, label) in enumerate(zip(arrays, labels)):
        path = root / f"{i:04d}.png"
        Image.fromarray(arr).save(path)
        rows.append((str(path), int(label), "test" if i >= 1500 else "train"))
    df = spark.createDataFrame(rows, "uri string, label int, split string").coalesce(2).cache()
    return df.where("split = 'train'"), df.where("split = 'test'")


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """An untrained (seeded) dense network for 8x8 gray images, saved uncompiled as the user's model file."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "digits.keras"
    model.save(path)
    return str(path)


def test_fit_trains_in_a_task_and_the_model_saves_its_file(spark, digits, digit_model, tmp_path):
    train, test = digits
    est = KerasImageFileEstimator(modelFile=digit_model, learningRate=0.03, stagingDir=str(tmp_path / "staging"),
                                  kerasFitParams={"epochs": 3, "batch_size": 32, "verbose": 0})
    model = est.fit(train)
    assert model.history["pid"] != os.getpid() and len(model.history["loss"]) == 3
    assert model.history["loss"][-1] < model.history["loss"][0]
    assert model.getTrainingConfig()["learningRate"] == 0.03
    scored = model.transform(test).orderBy("uri").collect()
    assert np.mean([r.prediction == r.label for r in scored]) > 0.8  # 297 held-out real digits
    model.write().overwrite().save(str(tmp_path / "model"))
    import shutil
    shutil.rmtree(tmp_path / "staging")
    loaded = KerasImageFileModel.load(str(tmp_path / "model"))
    assert loaded.getModelFile() == str(tmp_path / "model" / "model.keras")
    assert [r.prediction for r in loaded.transform(test).orderBy("uri").collect()] == [r.prediction for r in scored]


@pytest.mark.slow
def test_cross_validator_picks_the_better_learning_rate_and_saves(spark, digits, digit_model, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder

    train, test = digits
    est = KerasImageFileEstimator(modelFile=digit_model, labelCol="label", stagingDir=str(tmp_path / "staging"),
                                  kerasFitParams={"epochs": 3, "batch_size": 32, "verbose": 0})
    grid = ParamGridBuilder().addGrid(est.learningRate, LEARNING_RATES).build()
    evaluator = MulticlassClassificationEvaluator(labelCol="label", predictionCol="prediction", metricName="accuracy")
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=5,
                        collectSubModels=True)
    fitted = Pipeline(stages=[cv]).fit(train)  # the tuned estimator as one stage of a Pipeline
    cvm = fitted.stages[0]
    metrics = cvm.avgMetrics
    best = int(np.argmax(metrics))
    print("cross-validated accuracy per learning rate:", dict(zip(LEARNING_RATES, metrics)))
    assert cvm.bestModel.getTrainingConfig()["learningRate"] == LEARNING_RATES[best]
    assert metrics[best] > metrics[1 - best] + 0.2  # a real difference, not noise

    # held-out digits agree: the first fold's sub-model with the chosen rate beats the other one
    on_test = [evaluator.evaluate(cvm.subModels[0][i].transform(test)) for i in range(len(LEARNING_RATES))]
    assert on_test[best] > on_test[1 - best]

    # each param map of a fold trained in a Spark task of its own, not in this (driver) process
    pids = {m.history["pid"] for m in cvm.subModels[0]}
    assert os.getpid() not in pids and len(cvm.subModels[0][0].history["loss"]) == 3

    scored = fitted.transform(test).orderBy("uri").collect()
    before = [r.prediction for r in scored]
    assert np.mean([r.prediction == r.label for r in scored]) > 0.8  # the refit on all training digits
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    import shutil
    shutil.rmtree(tmp_path / "staging")  # the saved model holds its own copy of the trained file
    cv_loaded = loaded.stages[0]
    assert isinstance(cv_loaded, CrossValidatorModel) and isinstance(cv_loaded.bestModel, KerasImageFileModel)
    assert cv_loaded.avgMetrics == pytest.approx(metrics)
    assert [r.prediction for r in loaded.transform(test).orderBy("uri").collect()] == before


def test_bad_estimator_input_is_explained(spark, digits, digit_model, tmp_path):
    train, _ = digits
    with pytest.raises(TypeError, match="kerasFitParams .*expected a dict of Keras fit"):
        KerasImageFileEstimator(kerasFitParams={"epochz": 1})
    with pytest.raises(TypeError, match="learningRate -1.0: expected a positive number"):
        KerasImageFileEstimator(learningRate=-1)
    with pytest.raises(ValueError, match="set modelFile"):
        KerasImageFileEstimator().fit(train)
    with pytest.raises(ValueError, match="kerasOptimizer 'adamm' is not a Keras optimizer"):
        KerasImageFileEstimator(modelFile=digit_model, kerasOptimizer="adamm").fit(train)
    with pytest.raises(ValueError, match="labelCol 'y' is not a column"):
        KerasImageFileEstimator(modelFile=digit_model, labelCol="y").fit(train)


def test_docstring_examples():
    import doctest

    from pipeline import estimator

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(estimator.KerasImageFileEstimator, "KerasImageFileEstimator",
                                             globs={"KerasImageFileEstimator": KerasImageFileEstimator}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 3 and result.failed == 0
