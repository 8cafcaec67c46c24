#!/usr/bin/env bash
# The whole test suite on a fresh machine: the same set-up as start.sh, plus a real Postgres
# (DATABASE_URL if given, else a local server, installed and started if missing).
# Ends with one line "N passed, N failed" and a non-zero exit on any failure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The known-answer vectors (Wycheproof, Hawk, TOTP, JOSE) are not part of the repository: they
# live beside the checkout in ../shared/vectors, or where STRONGROOM_VECTORS points.
if [ -n "${STRONGROOM_VECTORS:-}" ]; then
  [ -d "$STRONGROOM_VECTORS/wycheproof" ] || die "STRONGROOM_VECTORS=$STRONGROOM_VECTORS has no wycheproof/ folder: point it at the shared known-answer vectors"
elif [ -d "$ROOT/../shared/vectors/wycheproof" ]; then
  export STRONGROOM_VECTORS="$(cd "$ROOT/../shared/vectors" && pwd)"
else
  die "known-answer vectors not found: expected $(cd "$ROOT/.." && pwd)/shared/vectors (beside the checkout) or STRONGROOM_VECTORS"
fi

ensure_node
ensure_softhsm --with-tools
ensure_wrk
ensure_npm_deps
build
ensure_dev_token
ensure_postgres
ensure_mariadb

cd "$ROOT"
mkdir -p var/test
results="var/test/results.tap"
say "running the tap suite (raw TAP in $results)"
# Compiled tests live in dist/, which tap's discovery skips (it is git-ignored): name them.
if [ "$#" -eq 0 ]; then
  mapfile -t files < <(find dist/test -name '*.test.js' | sort)
  set -- "${files[@]}"
fi
set +e
npx tap --reporter=tap --disable-coverage "$@" > "$results" 2>var/test/stderr.log
status=$?
set -e
if [ "$status" -ne 0 ] && [ -s var/test/stderr.log ]; then
  say "tap exited with status $status; the end of its stderr:"
  tail -n 40 var/test/stderr.log >&2
fi
node scripts/tap-summary.mjs "$results" "$status"
