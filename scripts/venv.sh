# Sourced by scripts/run and scripts/test: makes .venv and installs the given pinned
# requirements files into it, only when one of them changed since the last install.
#   ensure_venv requirements.txt [more files...]
ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
        echo "creating .venv with $python" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-$(echo "$*" | tr " /" "__")" wanted
    wanted="$(cat "$@" requirements.txt | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
        echo "installing $* into .venv ..." >&2
        for file in "$@"; do
            .venv/bin/python -m pip install -q --disable-pip-version-check -r "$file"
        done
        echo "$wanted" > "$stamp"
    fi
}
