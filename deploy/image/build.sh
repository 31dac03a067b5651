#!/usr/bin/env bash
# The production image's build steps, as a script: deploy/Dockerfile RUNs it, and tests/deploy runs it without
# Docker into a temporary prefix, so a broken step fails a test and not only an image build.
#
#   build.sh wheels WHEEL_DIR               builder stage: a wheel for every pinned requirement (compilers allowed)
#   build.sh install PREFIX WHEEL_DIR       final stage: PREFIX/venv from those wheels only (no index, no compiler),
#                                           the application in PREFIX/app, its static files collected
#
# The source is the checkout this script belongs to (AIOS_SOURCE overrides it). PYTHON (default python3) must be
# Python 3.11 or newer; the venv is made from it.
set -euo pipefail

PYTHON=${PYTHON:-python3}
SOURCE=${AIOS_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# What the running product needs from the checkout: the settings and URLs, the apps, the Celery wiring, the
# entrypoint, the templates and static sources. Tests, benchmarks, the development inference server and the
# embedded stack's launcher stay out of the image.
APP_PATHS=(manage.py pyproject.toml aios_web apps workers templates static deploy/__init__.py deploy/image)

die() {
    echo "build.sh: $*" >&2
    exit 1
}

wheels() {
    local wheel_dir=$1
    mkdir -p "$wheel_dir"
    "$PYTHON" -m pip wheel --disable-pip-version-check --no-cache-dir --wheel-dir "$wheel_dir" \
        -r "$SOURCE/requirements.txt"
}

# A throwaway production environment for collectstatic only: production settings refuse to load without their
# secrets and service URLs. These are random per build (the URLs name nothing: collectstatic connects to nothing)
# and never written into the image.
build_time_env() {
    local python=$1
    "$python" - <<'EOF'
import base64, secrets
print("DJANGO_SECRET_KEY=" + secrets.token_urlsafe(64))
print("AIOS_CREDENTIALS_KEY=" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
print("AIOS_AUDIT_SIGNING_KEY=" + secrets.token_urlsafe(48))
EOF
}

install() {
    local prefix=$1 wheel_dir=$2
    [ -d "$wheel_dir" ] || die "no wheel directory at $wheel_dir (run: build.sh wheels $wheel_dir)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11"
    mkdir -p "$prefix"
    rm -rf "$prefix/venv" "$prefix/app"
    "$PYTHON" -m venv "$prefix/venv"
    local venv_python=$prefix/venv/bin/python
    # --no-index: only the builder's wheels, so nothing is compiled (or fetched) in the final stage.
    "$venv_python" -m pip install --disable-pip-version-check --no-cache-dir --no-index --find-links "$wheel_dir" \
        -r "$SOURCE/requirements.txt"

    mkdir -p "$prefix/app/deploy"
    local path
    for path in "${APP_PATHS[@]}"; do
        [ -e "$SOURCE/$path" ] || die "$SOURCE/$path is missing"
        cp -R "$SOURCE/$path" "$prefix/app/$path"
    done
    # The builder's drag and drop script, from npm (package-lock.json); without it the builder keeps its buttons.
    if [ -f "$SOURCE/node_modules/sortablejs/Sortable.min.js" ]; then
        mkdir -p "$prefix/app/node_modules"
        cp -R "$SOURCE/node_modules/sortablejs" "$prefix/app/node_modules/sortablejs"
    fi
    find "$prefix/app" -name __pycache__ -type d -prune -exec rm -rf {} +

    # Static files, hashed and compressed (whitenoise's manifest storage), into app/staticfiles, under a clean
    # environment so nothing of the builder's own (a DJANGO_SETTINGS_MODULE, an AIOS_ENV) leaks in.
    local -a secrets_env
    mapfile -t secrets_env < <(build_time_env "$venv_python")
    (
        cd "$prefix/app"
        env -i PATH="$prefix/venv/bin:/usr/bin:/bin" HOME="${TMPDIR:-/tmp}" LANG=C.UTF-8 \
            DJANGO_SETTINGS_MODULE=aios_web.settings AIOS_ENV=production AIOS_DATA_DIR="$prefix/build-data" \
            EMAIL_URL=smtp://localhost:25 DJANGO_DEFAULT_FROM_EMAIL=build@localhost \
            DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost:6379/0 \
            "${secrets_env[@]}" \
            "$venv_python" manage.py collectstatic --noinput --verbosity 1
    )
    rm -rf "$prefix/build-data"
    # Bytecode now: at run time the root filesystem may be read-only.
    "$venv_python" -m compileall -q "$prefix/app" >/dev/null
    [ -f "$prefix/app/staticfiles/staticfiles.json" ] || die "collectstatic wrote no manifest"
    echo "build.sh: installed into $prefix ($(find "$prefix/app/staticfiles" -type f | wc -l) static files)"
}

case "${1:-}" in
wheels)
    [ $# -eq 2 ] || die "usage: build.sh wheels WHEEL_DIR"
    wheels "$2"
    ;;
install)
    [ $# -eq 3 ] || die "usage: build.sh install PREFIX WHEEL_DIR"
    install "$2" "$3"
    ;;
*)
    die "usage: build.sh wheels WHEEL_DIR | build.sh install PREFIX WHEEL_DIR"
    ;;
esac
