# Source this to point the service or the CLI at the development token that scripts/start.sh
# created under var/:   . scripts/dev-env.sh && npx strongroom auth register genesys-cloud
# Values already set in the environment win.
_sr_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export SOFTHSM2_CONF="${SOFTHSM2_CONF:-$_sr_root/softhsm.conf}"
export PKCS11_TOKEN_LABEL="${PKCS11_TOKEN_LABEL:-strongroom}"
if [ -z "${PKCS11_PIN:-}" ] && [ -z "${PKCS11_PIN_FILE:-}" ]; then export PKCS11_PIN_FILE="$_sr_root/var/secrets/pkcs11-pin"; fi
if [ -z "${ADMIN_TOKEN:-}" ] && [ -z "${ADMIN_TOKEN_FILE:-}" ]; then export ADMIN_TOKEN_FILE="$_sr_root/var/secrets/admin-token"; fi
if [ -z "${DATABASE_URL:-}" ] && [ -z "${DATA_DIR:-}" ]; then export DATA_DIR="$_sr_root/var/data"; fi
unset _sr_root
