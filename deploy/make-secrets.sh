#!/usr/bin/env bash
# Writes the secrets deploy/compose.yaml reads, random and consistent with each other, into deploy/secrets/ (or
# the directory given). Existing files are kept, so running it again never changes a key in use; delete one
# file to replace that secret (deploy/README.md, "Key rotation", says what each one needs).
# The directory is 0700 (only you read it on the host); the files are 0444 because each container reads them
# as its own user.
set -euo pipefail
dir=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets}
mkdir -p "$dir"
chmod 0700 "$dir"
PYTHON=${PYTHON:-python3}

random() { "$PYTHON" -c 'import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))' "$1"; }
fernet() { "$PYTHON" -c 'import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())'; }

put() {  # put NAME VALUE: write only when missing
    local path=$dir/$1
    if [ ! -e "$path" ]; then
        (umask 077 && printf '%s\n' "$2" >"$path")
        chmod 0444 "$path"
        echo "wrote $path"
    fi
}
get() { head -n1 "$dir/$1"; }

put django_secret_key "$(random 64)"
put credentials_key "$(fernet)"
put audit_signing_key "$(random 48)"
put metrics_token "$(random 32)"
put postgres_password "$(random 32)"
put aios_owner_password "$(random 32)"
put aios_app_password "$(random 32)"
put redis_password "$(random 32)"
put database_owner_url "postgres://aios_owner:$(get aios_owner_password)@postgres:5432/aios"
put database_url "postgres://aios_app:$(get aios_app_password)@pgbouncer:6432/aios"
put pgbouncer_userlist "\"aios_app\" \"$(get aios_app_password)\""
put redis_url "redis://:$(get redis_password)@redis:6379/0"
put email_url "smtp://smtp:587"
