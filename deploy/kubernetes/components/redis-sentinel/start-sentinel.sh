#!/bin/sh
# A Sentinel watching the primary "sluice" by host name (pods change addresses).
set -eu
me="$(hostname).sluice-redis"
primary=""
for n in 0 1 2; do
  primary="$(redis-cli -h "sluice-redis-$n.sluice-redis" -p 26379 \
    sentinel get-master-addr-by-name sluice 2>/dev/null | head -n 1)" || true
  [ -n "$primary" ] && break
done
[ -z "$primary" ] && primary="sluice-redis-0.sluice-redis"
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
