# Sourced by start-redis.sh and start-sentinel.sh: sets $me (this pod's stable name) and
# $primary (whichever server the Sentinels name as primary; with no Sentinel answering,
# the first start, sluice-redis-0).
me="$(hostname).sluice-redis"
primary=""
for n in 0 1 2; do
  primary="$(redis-cli -h "sluice-redis-$n.sluice-redis" -p 26379 \
    sentinel get-master-addr-by-name sluice 2>/dev/null | head -n 1)" || true
  [ -n "$primary" ] && break
done
[ -z "$primary" ] && primary="sluice-redis-0.sluice-redis"
