#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for the tests on a free loopback port (installing
# PostgreSQL from Debian's packages if missing) and prints the environment the tests read:
#   OUTCORE_TEST_PG       url of the test database
#   OUTCORE_TEST_PG_CTL   command prefix that runs pg_ctl on that cluster (restart tests)
# Usage: eval "$(scripts/pg-test-server.sh start)"; ...; scripts/pg-test-server.sh stop "$dir"
set -euo pipefail
case "${1:-}" in
start)
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  dir=$(mktemp -d /tmp/outcore-pg.XXXXXX)
  as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U outcore -A trust -E UTF8 --no-sync >"$dir/initdb.log"
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" \
    start >/dev/null
  echo "export OUTCORE_TEST_PG='postgresql://outcore@127.0.0.1:$port/postgres'"
  echo "export OUTCORE_TEST_PG_CTL='${as[*]} $bin/pg_ctl -D $dir/data -l $dir/server.log -w'"
  echo "export OUTCORE_TEST_PG_DIR='$dir'"
  ;;
stop)
  dir=${2:?usage: stop DIR}
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start | stop DIR" >&2
  exit 2
  ;;
esac
