#!/bin/sh
# A Sentinel watching the primary "sluice" by host name (pods change addresses).
set -eu
. /scripts/find-primary.sh
cat > /sentinel/sentinel.conf <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor sluice $primary 6379 2
sentinel down-after-milliseconds sluice 5000
sentinel failover-timeout sluice 30000
sentinel parallel-syncs sluice 1
CONF
exec redis-sentinel /sentinel/sentinel.conf
