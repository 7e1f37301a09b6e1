#!/usr/bin/env bash
# Stop what scripts/infra_up.sh started in DIR (default .infra); the PostgreSQL cluster's files stay.
set -uo pipefail

DIR=$(realpath -m "${1:-.infra}")
for name in mlflow s3; do
  if [[ -f $DIR/$name.pid ]]; then
    pid=$(cat "$DIR/$name.pid")
    kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid" 2> /dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2> /dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2> /dev/null
    rm -f "$DIR/$name.pid"
  fi
done
if [[ -f $DIR/pgdata ]]; then
  PGDATA=$(cat "$DIR/pgdata")
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1)
  [[ -x ${PGBIN:-}/pg_ctl ]] || PGBIN=$(dirname "$(command -v pg_ctl)")
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop > /dev/null
  else
    "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop > /dev/null
  fi
fi
echo "down: $DIR"
