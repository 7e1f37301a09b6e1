"""The batch-predict Prefect task: :func:`classiflow.tracking.predictions.batch_predict`, retried and logged."""

from prefect import task

from classiflow.tracking.predictions import batch_predict as _batch_predict

batch_predict = task(name="batch-predict")(_batch_predict)
