"""Recording proxy: sits between a real EWS client and the gateway of `ews-gateway demo` and writes
what the client sent, with the outcome, to fixtures/recorded/<client>/ (see its README.md).

Usage: python3 record_proxy.py GATEWAY_BASE_URL SIM_BASE_URL OUT_DIR
Prints `recording proxy http://127.0.0.1:PORT` when it listens; the client gets that origin
instead of the gateway's. Requests are forwarded one at a time (a lock), so the recorded order is
an order the gateway and the simulator really served them in, and the simulator's log entries
after the last `seq` seen before a request are exactly what that request caused upstream.
Passwords are never written: only the login and whether it was the demo password.
"""
import http.client
import http.server
import json
import os
import re
import ssl
import sys
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from base64 import b64decode

S11 = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
# Request headers replayed as sent; everything else (Authorization, Cookie, Host, lengths,
# hop-by-hop) is either secret, connection-specific or recomputed.
KEPT_HEADERS = ("content-type", "accept", "accept-encoding", "user-agent", "soapaction",
                "x-anchormailbox", "x-preferserveraffinity", "x-backendoverridecookie",
                "x-clientstatistics")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "host", "content-length"}
ID_ELEMENTS = {"ItemId", "FolderId", "AttachmentId", "RootItemId", "ParentFolderId"}

GATEWAY = SIM = OUT = None
LOCK = threading.Lock()
COUNTER = [0]


def sim_log():
    with urllib.request.urlopen(f"{SIM}/_sim/requests") as resp:
        return json.load(resp)


def local(tag):
    return tag.rsplit("}", 1)[-1]


def parse(body):
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def operation(body):
    root = parse(body)
    if root is None:
        return None
    soap_body = root.find(f"{{{S11}}}Body")
    if soap_body is None or len(soap_body) == 0:
        return None
    return local(soap_body[0].tag)


def facts(content_type, body):
    """ResponseClass/ResponseCode per response message, a SOAP fault's code, the ids returned."""
    out = {"messages": [], "fault": None, "ids": []}
    if "xml" not in (content_type or "") or not body:
        return out
    root = parse(body)
    if root is None:
        return out
    for el in root.iter():
        name = local(el.tag)
        if el.tag.startswith(f"{{{M}}}") and "ResponseClass" in el.attrib:
            out["messages"].append({
                "class": el.attrib["ResponseClass"],
                "code": el.findtext(f"{{{M}}}ResponseCode"),
            })
        elif name == "Fault" and el.tag.startswith(f"{{{S11}}}"):
            # Exchange puts the code in detail/e:ResponseCode (errors namespace).
            codes = [c.text for c in el.iter() if local(c.tag) == "ResponseCode"]
            out["fault"] = codes[0] if codes else (el.findtext("faultcode") or "").split(":")[-1]
        elif name in ID_ELEMENTS and "Id" in el.attrib and el.tag.startswith(f"{{{T}}}"):
            out["ids"].append(el.attrib["Id"])
    return out


def acting_mailbox(body):
    """The mailbox named by each ExchangeImpersonation of an upstream request."""
    root = parse(body.encode())
    if root is None:
        return []
    found = []
    for imp in root.iter(f"{{{T}}}ExchangeImpersonation"):
        sid = imp.find(f"{{{T}}}ConnectingSID")
        found.append(next((c.text for c in sid), None) if sid is not None else None)
    return found


def login(headers):
    value = headers.get("authorization")
    if not value or not value.lower().startswith("basic "):
        return None
    user, _, password = b64decode(value.split(None, 1)[1]).decode().partition(":")
    local_part = user.split("@")[0].split("\\")[-1]
    # Only the demo's public passwords are recognised; anything else is recorded as "wrong".
    return {"login": user, "password": "demo" if password == f"{local_part}-demo-pass" else "wrong"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def handle_one(self):
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.headers.get("expect", "").lower() == "100-continue":
            headers.pop("expect")
        with LOCK:
            before = max((r["seq"] for r in sim_log()), default=0)
            target = urllib.parse.urlsplit(GATEWAY)
            if target.scheme == "https":
                # The demo's own CA (EWS_RECORD_CA), as the client trusts it.
                ctx = ssl.create_default_context(cafile=os.environ.get("EWS_RECORD_CA"))
                conn = http.client.HTTPSConnection(target.hostname, target.port, timeout=300,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            fwd = {k: v for k, v in headers.items() if k not in HOP}
            conn.request(self.command, self.path, body=body or None, headers=fwd)
            resp = conn.getresponse()
            resp_body = resp.read()
            resp_headers = resp.getheaders()
            conn.close()
            upstream = [r for r in sim_log()
                        if r["seq"] > before and r["path"].lower().startswith("/ews/")]
            self.record(headers, body, resp, resp_headers, resp_body, upstream)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp_headers:
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp_body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp_body)

    def record(self, headers, body, resp, resp_headers, resp_body, upstream):
        COUNTER[0] += 1
        op = operation(body) if body else None
        name = op or self.command.lower()
        stem = os.path.join(OUT, f"{COUNTER[0]:03d}-{name}")
        content_type = dict((k.lower(), v) for k, v in resp_headers).get("content-type", "")
        meta = {
            "method": self.command,
            "path": self.path,
            "headers": {k: headers[k] for k in KEPT_HEADERS if k in headers},
            "auth": login(headers),
            "operation": op,
            "expect": {
                "status": resp.status,
                "content_type": content_type,
                **facts(content_type, resp_body),
                "upstream": [
                    {"operation": operation(r["body"].encode()),
                     "acting_as": acting_mailbox(r["body"])}
                    for r in upstream
                ],
            },
        }
        with open(f"{stem}.request.xml", "wb") as f:
            f.write(body)
        with open(f"{stem}.json", "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.write("\n")

    do_GET = do_POST = do_HEAD = handle_one


def main():
    global GATEWAY, SIM, OUT
    GATEWAY, SIM, OUT = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"), sys.argv[3]
    GATEWAY = re.sub(r"/EWS/Exchange\.asmx$", "", GATEWAY, flags=re.I)
    os.makedirs(OUT, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"recording proxy http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
