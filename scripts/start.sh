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
if [ -z "${PKCS11_PIN:-}" ] && [ -z "${PKCS11_PIN_FILE:-}" ]; then export PKCS11_PIN_FILE="$SECRETS_DIR/pkcs11-pin"; fi
if [ -z "${ADMIN_TOKEN:-}" ] && [ -z "${ADMIN_TOKEN_FILE:-}" ]; then export ADMIN_TOKEN_FILE="$SECRETS_DIR/admin-token"; fi
export PKCS11_TOKEN_LABEL="$DEV_TOKEN_LABEL"

scheme=http
if [ -n "${TLS_CERT:-}${TLS_PFX:-}" ]; then scheme=https; fi
url="$scheme://${HOST:-127.0.0.1}:${PORT:-8080}/key-management/v1"
admin_hint='$(cat var/secrets/admin-token)'
if [ -n "${ADMIN_TOKEN:-}" ]; then admin_hint='$ADMIN_TOKEN'; elif [ -n "${ADMIN_TOKEN_FILE:-}" ]; then admin_hint="\$(cat $ADMIN_TOKEN_FILE)"; fi
cat >&2 <<INFO

strongroom is starting at $url
  health:    curl $url/health
  register a Hawk credential for Genesys Cloud (the authKey is shown once):
    curl -X POST $url/auth -H "Authorization: Bearer $admin_hint" \\
         -H 'Content-Type: application/json' -d '{"id":"genesys-cloud"}'
  or, with the service stopped:  npx strongroom auth register genesys-cloud
  secrets (PINs, admin token):   var/secrets/ (mode 0600)

INFO
exec npm start --silent
