#!/bin/sh
# Start as a replica of whichever server the Sentinels name as primary; with no Sentinel
# answering (the first start), sluice-redis-0 is the primary.
set -eu
me="$(hostname).sluice-redis"
primary=""
for n in 0 1 2; do
  primary="$(redis-cli -h "sluice-redis-$n.sluice-redis" -p 26379 \
    sentinel get-master-addr-by-name sluice 2>/dev/null | head -n 1)" || true
  [ -n "$primary" ] && break
done
[ -z "$primary" ] && primary="sluice-redis-0.sluice-redis"
set -- --port 6379 --dir /data --appendonly yes --replica-announce-ip "$me"
if [ "$primary" != "$me" ]; then
  set -- "$@" --replicaof "$primary" 6379
fi
exec redis-server "$@"
