# Sourced by .ci/run: starts a throwaway PostgreSQL cluster on 127.0.0.1 for the sync-server
# tests (TLS on, with a throwaway CA), exports HEARTH_TEST_POSTGRES_URL and the CA files, and
# stops and removes the cluster on exit.
# Installs PostgreSQL with apt when initdb/pg_ctl are missing (a fresh CI machine).

pg_bin_dir() {
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && found="$d"
  done
  echo "$found"
}

PG_BIN=$(pg_bin_dir)
if [ -z "$PG_BIN" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PG_BIN=$(pg_bin_dir)
fi
if [ -z "$PG_BIN" ]; then
  echo "PostgreSQL could not be installed: initdb/pg_ctl not found" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

PG_PORT=""
for p in $(seq 5433 5533); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PG_PORT=$p; break; fi
done
[ -n "$PG_PORT" ] || { echo "no free port for PostgreSQL" >&2; exit 1; }

PG_DIR=$(mktemp -d /tmp/hearth-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
stop_postgres() {
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}
trap stop_postgres EXIT
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync >/dev/null
# TLS with a throwaway CA, so the tests can connect with sslmode=verify-full; a second,
# unrelated CA for the test that an unknown certificate is refused. Plain connections still work.
(
  cd "$PG_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=hearth test CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.crt 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" \
    -keyout other.key -out other.crt 2>/dev/null
  chmod 600 server.key
  [ "$(id -u)" = 0 ] && chown postgres:postgres server.key server.crt
  true
)
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c ssl=on -c ssl_cert_file=$PG_DIR/server.crt -c ssl_key_file=$PG_DIR/server.key" start >/dev/null
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres hearth_test
export HEARTH_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/hearth_test"
export HEARTH_TEST_POSTGRES_CA="$PG_DIR/ca.crt" HEARTH_TEST_POSTGRES_OTHER_CA="$PG_DIR/other.crt"
echo "PostgreSQL from $PG_BIN on 127.0.0.1:$PG_PORT"
