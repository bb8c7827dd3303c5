# The image compose.yaml builds for web, worker and beat.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# the translations: locale/*/*.po to .mo (build output, not in git; docs/i18n.md)
RUN python dev.py messages
RUN useradd --system --home /var/lib/relaydesk relaydesk && mkdir -p /var/lib/relaydesk \
    && chown relaydesk /var/lib/relaydesk
USER relaydesk
EXPOSE 8000
