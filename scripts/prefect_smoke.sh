#!/usr/bin/env bash
# Smoke test of the Prefect deployment path, exactly as the README describes it:
# a local server (foreground process), a process work pool, `prefect deploy`, a worker, and
# `prefect deployment run 'train-flow/local' --watch`. Everything it writes goes to a temp dir
# (MLflow store included); it stops what it started.
#   SOURCE=../shared/datasets/cifar10-jpg.tar.gz bash scripts/prefect_smoke.sh   # real data
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
work=$(mktemp -d)
port=${PORT:-4299}
export PREFECT_HOME="$work/prefect" PREFECT_API_URL="http://127.0.0.1:$port/api"
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MLFLOW_REGISTRY_URI="sqlite:///$work/mlflow.db"
pids=()
cleanup() {
  # worker first (it retries a vanished server for minutes), then the server; SIGKILL what
  # has not exited after 10 s rather than `wait` forever on a process that ignores SIGTERM
  local i alive
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -- "-${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq 20); do
    alive=0
    for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && return
    sleep 0.5
  done
  for i in "${pids[@]}"; do kill -KILL -- "-$i" 2>/dev/null || true; done
}
trap cleanup EXIT

if [[ -z "${SOURCE:-}" ]]; then
  python - "$work" <<'PY'
import sys, tarfile
from pathlib import Path
from tests.imagegen import write_image_folder
work = Path(sys.argv[1])
folder = write_image_folder(work / "shapes", splits={"train": 24, "test": 8}, size=20)
with tarfile.open(work / "shapes.tar.gz", "w:gz") as tf:
    tf.add(folder, arcname="shapes")
PY
  SOURCE="$work/shapes.tar.gz"
  # seconds, not minutes: one epoch, a one-point prune sweep, a few latency repeats; 24 test
  # images make one flipped prediction 4 points, so the int8 gates are left to tests/test_export.py
  EXTRA=', "train.epochs": 1, "train.min_steps": 0, "data.image_size": 16, "prune.finetune_epochs": 1, "prune.sweep": [0.5]'
  EXTRA+=', "prune.latency_repeats": 3, "export.calibration_images": 16, "export.latency_repeats": 3'
  EXTRA+=', "export.throughput_batch": 8, "export.int8_max_accuracy_drop": 100, "export.int8_min_agreement": 0'
fi
SOURCE=$(realpath "$SOURCE")

set -m
prefect server start --host 127.0.0.1 --port "$port" > "$work/server.log" 2>&1 &
pids+=($!)
prefect server status --wait --timeout 120 > /dev/null || { tail -20 "$work/server.log"; exit 1; }
prefect work-pool create local --type process --overwrite > /dev/null
prefect --no-prompt deploy --all > "$work/deploy.log" 2>&1 || { cat "$work/deploy.log"; exit 1; }
prefect worker start --pool local > "$work/worker.log" 2>&1 &
pids+=($!)
status=0
prefect deployment run 'train-flow/local' --watch --watch-timeout 1800 \
  --param overrides="{\"data.source\": \"$SOURCE\"${EXTRA:-}}" \
  --param workdir="$work/run" || status=$?
if [[ $status -ne 0 ]]; then
  tail -40 "$work/worker.log"
  exit "$status"
fi
python - "$work" <<'PY'
import json, sys
from pathlib import Path
import mlflow
work = Path(sys.argv[1])
reg = json.loads((work / "run/reports/registration.json").read_text())
client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
v = client.get_model_version_by_alias(reg["model_name"], "challenger")
parent = client.get_run(v.tags["pipeline_run_id"])
assert parent.data.tags["classiflow.entry"] == "prefect", parent.data.tags
exp = client.get_experiment_by_name("classiflow")
children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
stages = {r.data.tags["classiflow.stage"]: r.info.status for r in children}
from classiflow.pipeline import STAGES
expected = {stage.name for stage in STAGES}
assert stages == dict.fromkeys(expected, "FINISHED"), stages
assert (work / "run/reports/confusion_matrix.png").exists() and (work / "run/models/export/model.onnx").exists()
print(f"prefect smoke: every stage FINISHED under one pipeline run {parent.info.run_id}")
print(f"prefect smoke: OK, {reg['model_name']} v{v.version} @challenger, test accuracy {v.tags['test_accuracy']}")
PY
