# Shared by the bench scripts (sourced): a controller on its production
# defaults (enrollment required, TLS, API tokens) and an agent enrolled with
# it the way a Pi is (`fleetctl tokens create`, `fleet-agent enroll`).
# Expects: $work (a scratch directory), $bin (where fleet-controller and
# fleetctl are) and $agent_bin (the fleet-agent binary).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_controller: runs fleet-controller in the background with its data in
# $work/controller; sets $controller (its pid), $mqtt_port and $grpc_url.
start_controller() {
  mqtt_port=$(port); local grpc; grpc=$(port)
  grpc_url="https://127.0.0.1:$grpc"
  "$bin/fleet-controller" --data-dir "$work/controller" --mqtt-listen "127.0.0.1:$mqtt_port" \
    --grpc-listen "127.0.0.1:$grpc" --http-listen 127.0.0.1:0 >"$work/controller.log" 2>&1 &
  controller=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$grpc") 2>/dev/null && [ -f "$work/controller/admin.token" ] && return 0
    sleep 0.2
  done
  echo "the controller did not start; its log:" >&2; cat "$work/controller.log" >&2; return 1
}

# enroll_agent CONFIG: a bootstrap token from the controller, then `fleet-agent enroll`.
enroll_agent() {
  local token
  token=$("$bin/fleetctl" --server "$grpc_url" --ca "$work/controller/tls/ca.pem" \
    --token-file "$work/controller/admin.token" tokens create --ttl 10m 2>/dev/null)
  FLEET_BOOTSTRAP_TOKEN=$token "$agent_bin" --config "$1" enroll --controller "$grpc_url" \
    --ca "$work/controller/tls/ca.pem" >/dev/null
}

# agent_config NODE: writes $work/NODE.toml (data in $work/NODE, the controller's broker) and prints its path.
agent_config() {
  printf 'node_id = "%s"\ndata_dir = "%s"\n[mqtt]\nurl = "mqtt://127.0.0.1:%s"\n' \
    "$1" "$work/$1" "$mqtt_port" >"$work/$1.toml"
  echo "$work/$1.toml"
}

# acked CONFIG: fails unless the agent's own status shows an ack (it is enrolled and heard).
acked() {
  "$agent_bin" --config "$1" status | grep -q "last ack    20" || {
    echo "the agent got no ack: it is not enrolled or not heard:" >&2
    "$agent_bin" --config "$1" status >&2; return 1; }
}
