#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for the tests on a free loopback port (installing
# PostgreSQL from Debian's packages if missing) and prints the environment the tests read:
#   OUTCORE_TEST_PG       url of the test database
#   OUTCORE_TEST_PG_CTL   command prefix that runs pg_ctl on that cluster (restart tests)
#   OUTCORE_TEST_PG_CA    the CA that signed the server's TLS certificate; _OTHER_CA another CA
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
  # TLS for the tests: a test CA, a server certificate it signed, and an unrelated CA.
  for ca in ca other; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=outcore test $ca" \
      -keyout "$dir/$ca.key" -out "$dir/$ca.crt" >/dev/null 2>&1
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" >/dev/null 2>&1
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir/server.key" "$dir/server.crt"; fi
  chmod 600 "$dir/server.key"
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
    start >/dev/null
  echo "export OUTCORE_TEST_PG='postgresql://outcore@127.0.0.1:$port/postgres'"
  echo "export OUTCORE_TEST_PG_CTL='${as[*]} $bin/pg_ctl -D $dir/data -l $dir/server.log -w'"
  echo "export OUTCORE_TEST_PG_DIR='$dir'"
  echo "export OUTCORE_TEST_PG_CA='$dir/ca.crt'"
  echo "export OUTCORE_TEST_PG_OTHER_CA='$dir/other.crt'"
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
