#!/bin/sh
# Start as a replica of whichever server the Sentinels name as primary; with no Sentinel
# answering (the first start), sluice-redis-0 is the primary.
set -eu
. /scripts/find-primary.sh
set -- --port 6379 --dir /data --appendonly yes --replica-announce-ip "$me"
if [ "$primary" != "$me" ]; then
  set -- "$@" --replicaof "$primary" 6379
fi
exec redis-server "$@"
