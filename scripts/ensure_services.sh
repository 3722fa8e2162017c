#!/usr/bin/env bash
# Make sure RabbitMQ (5672) and Redis (6379) answer on 127.0.0.1; start them if they are down.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    port_open "$2" && return 0
    sleep 0.25
  done
  echo "services: $1 did not open port $2 within $3 s" >&2
  return 1
}

if ! port_open 6379; then
  echo "services: starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port redis 6379 20
fi

if ! port_open 5672; then
  echo "services: starting rabbitmq-server"
  rabbitmq-server -detached
  wait_port rabbitmq 5672 60
  # the port opens before the node is fully booted; await_startup fails until it is
  for _ in $(seq 1 30); do
    rabbitmqctl await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi
echo "services: rabbitmq :5672 and redis :6379 are up"
