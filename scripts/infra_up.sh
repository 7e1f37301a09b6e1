#!/usr/bin/env bash
# The team's shared stack as ordinary processes on loopback, no Docker: PostgreSQL (Debian's), an S3-compatible
# server (moto), and an MLflow tracking server that keeps runs and the registry in PostgreSQL and proxies
# artifacts to s3://mlflow, so that clients need only its URL and no S3 credentials.
#
#   scripts/infra_up.sh [DIR]        # default .infra; then: set -a; source DIR/team.env; set +a
#   scripts/infra_down.sh [DIR]
#
# DIR/team.env holds what clients set (MLFLOW_TRACKING_URI, the DVC remote's endpoint);
# DIR/secrets.env (mode 600) the database password and the S3 keys, for the servers and `dvc push` only.
# Ports: PG_PORT, S3_PORT, MLFLOW_PORT (defaults 55432, 55433, 55434). PG_FSYNC=off for throw-away test stacks.
# moto keeps objects in memory: a stack for tests and trials; a team points the MLflow server at real S3 or
# MinIO instead (README, "From one machine to a team").
set -euo pipefail

DIR=$(realpath -m "${1:-.infra}")
PG_PORT=${PG_PORT:-55432}
S3_PORT=${S3_PORT:-55433}
MLFLOW_PORT=${MLFLOW_PORT:-55434}
BIN=$(dirname "$(command -v python)")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[[ -x ${PGBIN:-}/initdb ]] || PGBIN=$(dirname "$(command -v initdb || echo /missing/initdb)")
[[ -x $PGBIN/initdb ]] || { echo "error: PostgreSQL not found (apt-get install postgresql)" >&2; exit 1; }
for tool in mlflow moto_server; do
  [[ -x $BIN/$tool ]] || { echo "error: $BIN/$tool missing (pip install -e '.[team]')" >&2; exit 1; }
done
mkdir -p "$DIR"
chmod 700 "$DIR"

# PostgreSQL refuses to run as root: as root the cluster belongs to the postgres user, in a folder it can reach.
if [[ $(id -u) == 0 ]]; then
  PGDATA=${PGDATA_DIR:-/var/tmp/classiflow-pg-$(echo "$DIR" | sha1sum | cut -c1-12)}
  as_pg() { runuser -u postgres -- "$@"; }
else
  PGDATA=${PGDATA_DIR:-$DIR/pg}
  as_pg() { "$@"; }
fi

if [[ ! -f $DIR/secrets.env ]]; then
  umask 077
  cat > "$DIR/secrets.env" <<EOF
PGPASSWORD=$(python -c 'import secrets; print(secrets.token_urlsafe(18))')
AWS_ACCESS_KEY_ID=classiflow
AWS_SECRET_ACCESS_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(18))')
EOF
  umask 022
fi
set -a
# shellcheck source=/dev/null
source "$DIR/secrets.env"
set +a

if [[ ! -f $PGDATA/PG_VERSION ]]; then
  mkdir -p "$PGDATA"
  [[ $(id -u) == 0 ]] && chown postgres "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$PGPASSWORD" > "$pwfile"
  [[ $(id -u) == 0 ]] && chown postgres "$pwfile"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U classiflow --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 > "$DIR/initdb.log"
  rm -f "$pwfile"
fi
if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status > /dev/null 2>&1; then
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 30 start -o \
    "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PGDATA -c fsync=${PG_FSYNC:-on}" > /dev/null
fi
echo "$PGDATA" > "$DIR/pgdata"
for db in mlflow optuna; do
  "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U classiflow -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
    | grep -q 1 || "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U classiflow "$db"
done

start() {  # name, command...: detached, its own session, pid in DIR/name.pid; nothing if it already runs
  local name=$1
  shift
  [[ -f $DIR/$name.pid ]] && kill -0 "$(cat "$DIR/$name.pid")" 2> /dev/null && return 0
  setsid nohup "$@" > "$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}
wait_for() {  # url, name
  for _ in $(seq 120); do
    python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2> /dev/null && return 0
    kill -0 "$(cat "$DIR/$2.pid")" 2> /dev/null || { echo "error: $2 exited; see $DIR/$2.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "error: $2 did not answer on $1 within 60 s; see $DIR/$2.log" >&2
  exit 1
}

S3=http://127.0.0.1:$S3_PORT
start s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
wait_for "$S3/moto-api/" s3
python - "$S3" <<'EOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
for bucket in ("mlflow", "dvc"):
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
EOF

start mlflow env MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 MLFLOW_S3_ENDPOINT_URL="$S3" \
  MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://classiflow:$PGPASSWORD@127.0.0.1:$PG_PORT/mlflow" \
  "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --artifacts-destination s3://mlflow --serve-artifacts
wait_for "http://127.0.0.1:$MLFLOW_PORT/health" mlflow

cat > "$DIR/team.env" <<EOF
MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
DVC_S3_ENDPOINT=$S3
EOF
echo "up: MLflow http://127.0.0.1:$MLFLOW_PORT (PostgreSQL 127.0.0.1:$PG_PORT, artifacts s3://mlflow at $S3)"
echo "clients: set -a; source $DIR/team.env; set +a"
