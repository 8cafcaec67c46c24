#!/usr/bin/env bash
# Fresh machine → running service, on the embedded database (PGlite under var/data).
# Installs softhsm2 if missing, runs npm ci, builds, creates a development token under var/
# (generated PINs in var/secrets, mode 0600) and starts the service in the foreground.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ensure_node
ensure_softhsm
ensure_npm_deps
build
ensure_dev_token

cd "$ROOT"
admin_from_env="${ADMIN_TOKEN:+yes}"
. scripts/dev-env.sh

scheme=http
if [ -n "${TLS_CERT:-}${TLS_PFX:-}" ]; then scheme=https; fi
url="$scheme://${HOST:-127.0.0.1}:${PORT:-8080}/key-management/v1"
admin_hint="\$(cat ${ADMIN_TOKEN_FILE:-var/secrets/admin-token})"
if [ -n "$admin_from_env" ]; then admin_hint='$ADMIN_TOKEN'; fi
cat >&2 <<INFO

strongroom is starting at $url
  health:    curl $url/health
  register a Hawk credential for Genesys Cloud (the authKey is shown once):
    curl -X POST $url/auth -H "Authorization: Bearer $admin_hint" \\
         -H 'Content-Type: application/json' -d '{"id":"genesys-cloud"}'
  or, with the service stopped:  . scripts/dev-env.sh && npx strongroom auth register genesys-cloud
  secrets (PINs, admin token):   var/secrets/ (mode 0600)

INFO
exec npm start --silent
