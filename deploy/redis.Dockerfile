# Redis for the cpu compose stack on hosts that reach no image registry: Debian's
# redis-server on the local base (`make image` builds it as localhost/sluice-redis).
# Elsewhere compose uses the official redis:7 image (REDIS_IMAGE).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
