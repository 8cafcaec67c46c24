# Shared set-up for scripts/start.sh and scripts/test.sh. Source it; do not run it.
# Every step checks before it acts, so a second run on a prepared machine is quick.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SOFTHSM2_CONF="${SOFTHSM2_CONF:-$ROOT/softhsm.conf}"
SECRETS_DIR="$ROOT/var/secrets"
DEV_TOKEN_LABEL="${PKCS11_TOKEN_LABEL:-strongroom}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run as root, through sudo when needed (package installs, the postgres superuser).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "'$*' needs root and sudo is not available"; fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "Node.js 20.11 or newer with npm is required (https://nodejs.org or your distribution's nodejs 20+ package)"
  fi
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=11)?0:1)' \
    || die "Node.js $(node --version) is too old: strongroom needs 20.11 or newer (Fastify 5)"
  # node-gyp builds pkcs11js: it needs a compiler, make and python3.
  local missing=()
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

ensure_softhsm() {
  local missing=()
  command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  if [ "${1:-}" = "--with-tools" ]; then
    command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
    # NSS softoken: the second PKCS#11 module of the key store contract tests.
    command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# wrk, the C load generator of `npm run bench` (scripts/bench-wrk.mjs calls this when it is missing).
ensure_wrk() {
  command -v wrk >/dev/null 2>&1 || apt_install wrk
}

# npm ci when the lockfile changed since the last install; then prove the native module exists.
ensure_npm_deps() {
  cd "$ROOT"
  local stamp="node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ ! -d node_modules/pkcs11js ]; then
    say "npm ci"
    npm ci --no-audit --no-fund
  fi
  local native="node_modules/pkcs11js/build/Release/pkcs11.node"
  if [ ! -f "$native" ]; then
    say "pkcs11js native module missing: rebuilding it"
    npm rebuild pkcs11js --foreground-scripts || true
  fi
  [ -f "$native" ] || die "pkcs11js was not built ($native is missing): npm did not run its install script; check that g++, make and python3 are installed, then run 'npm rebuild pkcs11js'"
  node -e "require('$ROOT/$native')" 2>/dev/null || die "$native does not load: rebuild it with 'npm rebuild pkcs11js'"
}

build() {
  cd "$ROOT"
  say "npm run build"
  npm run --silent build
}

random_secret() { node -e "process.stdout.write(require('crypto').randomBytes($1).toString('base64url'))"; }

# The development token under var/, initialised once with generated PINs kept in 0600 files.
ensure_dev_token() {
  cd "$ROOT"
  mkdir -p var/softhsm/tokens
  install -d -m 0700 "$SECRETS_DIR"
  if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+${DEV_TOKEN_LABEL}[[:space:]]*$"; then
    [ -f "$SECRETS_DIR/pkcs11-pin" ] || die "token '$DEV_TOKEN_LABEL' exists but $SECRETS_DIR/pkcs11-pin is missing; set PKCS11_PIN_FILE to its PIN"
  else
    say "creating the development token '$DEV_TOKEN_LABEL' in var/softhsm/tokens"
    (umask 077
      random_secret 24 > "$SECRETS_DIR/pkcs11-pin"
      random_secret 24 > "$SECRETS_DIR/pkcs11-so-pin")
    # softhsm2-util takes PINs only as arguments; this is a local development token.
    softhsm2-util --init-token --free --label "$DEV_TOKEN_LABEL" \
      --so-pin "$(cat "$SECRETS_DIR/pkcs11-so-pin")" --pin "$(cat "$SECRETS_DIR/pkcs11-pin")" >/dev/null
  fi
  if [ ! -f "$SECRETS_DIR/admin-token" ]; then
    (umask 077; random_secret 32 > "$SECRETS_DIR/admin-token")
  fi
  chmod 0600 "$SECRETS_DIR"/*
}

# MariaDB on 127.0.0.1:3306 (root, empty password) for the legacy-import tests: the example
# service's keypair table lives there. Installed and started (without systemd) when missing.
ensure_mariadb() {
  if node -e "require('net').connect(3306,'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))" 2>/dev/null; then
    return
  fi
  [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
  say "starting MariaDB"
  as_root install -d -o mysql -g mysql /run/mysqld
  as_root start-stop-daemon --start --oknodo --background --chuid mysql --exec /usr/sbin/mariadbd -- \
    --bind-address=127.0.0.1 --port=3306
  local up=0
  for _ in $(seq 1 30); do
    if node -e "require('net').connect(3306,'127.0.0.1').on('connect',()=>process.exit(0)).on('error',()=>process.exit(1))" 2>/dev/null; then
      up=1; break
    fi
    sleep 1
  done
  [ "$up" -eq 1 ] || die "MariaDB did not start on 127.0.0.1:3306"
  # A fresh Debian install lets root in only over the socket; the tests connect over TCP.
  if ! mariadb -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1; then
    say "allowing the MariaDB root user over TCP without a password (test machine)"
    as_root mariadb -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')"
  fi
}

# A Postgres server for the tests: DATABASE_URL if given, else the local one (installed and
# started if missing), reached as a CREATEDB role so each test file gets its own database.
ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    say "using DATABASE_URL for the tests"
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql
  fi
  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not start on 127.0.0.1:5432"
  fi
  local role_sql="DO \$\$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strongroom') THEN
        CREATE ROLE strongroom LOGIN CREATEDB PASSWORD 'strongroom';
      END IF;
    END \$\$;"
  if ! psql "postgres://strongroom:strongroom@127.0.0.1:5432/postgres" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    say "creating the Postgres role 'strongroom' for the tests"
    as_root runuser -u postgres -- psql -q -d postgres -c "$role_sql" >/dev/null
  fi
  export DATABASE_URL="postgres://strongroom:strongroom@127.0.0.1:5432/postgres"
}
