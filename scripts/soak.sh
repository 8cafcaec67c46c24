#!/usr/bin/env bash
# Soak test, not part of CI: the built service on a throw-away token and database, mixed valid and
# invalid traffic for SOAK_SECONDS (default 600), then a report (per-class statuses, 5xx, RSS,
# audit completeness). Exits non-zero on any 5xx, unexpected status, lost audit entry or unclean stop.
#   scripts/soak.sh [--seconds N] [--concurrency N]        SOAK_DIST=dir uses that build, skips npm run build
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_node
ensure_softhsm
ensure_npm_deps
if [ -z "${SOAK_DIST:-}" ]; then build; fi
ensure_postgres

cd "$ROOT"
exec node scripts/soak.mjs "$@"
