"""The HTTP server of `workbench teach`: the page, the camera's frames, and a JSON API.

The standard library's threading HTTP server: one user on a device needs no framework. It
trusts nothing a client sends. Every API request carries the session's random token (header
`X-Workbench-Token` or `?token=`), so another web page open in the same browser cannot drive
it (it can neither read the token nor send the header without the server's consent), and on
loopback the Host header must name loopback (no DNS rebinding). Bound to another address the
page itself needs the token too, and the URL printed carries it. Bodies are capped at
MAX_BODY; class names follow the class-folder rules; no request names a file path; one bad
request gets one error and the server goes on.

API (JSON in and out; errors are `{"error": ...}` with a 4xx status):

    GET    /api/state                              classes, counts, prediction, scores, fps
    POST   /api/classes                {"name"}    add a class
    DELETE /api/classes/NAME                       delete a class (and its unsaved examples)
    POST   /api/classes/NAME/examples              the current frame as an example, or the
                                                   JPEG/PNG in the body
    DELETE /api/classes/NAME/examples/I            delete an example
    GET    /api/classes/NAME/examples/I.jpg        an example's thumbnail
    POST   /api/save                               write DATA/CLASS/*.jpg, train, export
    GET    /frame.jpg                              the newest frame
"""

from __future__ import annotations

import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from workbench.core.errors import WorkbenchError
from workbench.report.teach_page import teach_page
from workbench.run.teach import TeachSession

MAX_BODY = 16 << 20  # bytes: a phone photo fits; a runaway upload does not
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class TeachServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, session: TeachSession, host: str, port: int) -> None:
        self.session = session
        self.token = secrets.token_urlsafe(18)
        self.loopback = host in LOOPBACK
        family_host = "::1" if host == "::1" else host
        if ":" in family_host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__((family_host, port), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self) -> str:
        host = str(self.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        if shown in ("0.0.0.0", "[::]"):
            shown = "HOST"
        query = "" if self.loopback else f"/?token={self.token}"
        return f"http://{shown}:{self.port}{query}"


class Handler(BaseHTTPRequestHandler):
    server: TeachServer
    server_version = "workbench-teach"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged: the terminal shows the session's own lines

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        given = self.headers.get("X-Workbench-Token") or (query.get("token") or [""])[0]
        return secrets.compare_digest(given.encode(), self.server.token.encode())

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in LOOPBACK

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "send the body with a Content-Length")
        try:
            size = int(length) if length else 0
        except ValueError:
            raise _Refused(400, "bad Content-Length") from None
        if size < 0:
            raise _Refused(400, "bad Content-Length")
        if size > MAX_BODY:
            self.close_connection = True  # the rest of the body is not read
            raise _Refused(413, f"the body is larger than {MAX_BODY >> 20} MiB")
        return self.rfile.read(size) if size else b""

    def _dispatch(self, method: str) -> None:
        try:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            path = parts.path
            if not self._host_ok():
                raise _Refused(403, "requests must name this machine's loopback address")
            page = method == "GET" and path in ("/", "/index.html")
            if not (page and self.server.loopback) and not self._authorized(query):
                raise _Refused(403, "missing or wrong token")
            body = self._body() if method in ("POST", "DELETE") else b""
            self._route(method, path, body, page)
        except _Refused as e:
            self._json(e.status, {"error": e.message})
        except WorkbenchError as e:
            self._json(400, {"error": str(e)})
        except (KeyError, IndexError):
            self._json(404, {"error": "no such class or example"})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # one bad request never stops the server
            print(f"warning: teach: {type(e).__name__}: {e}", file=sys.stderr)
            self._json(500, {"error": "internal error"})

    def _route(self, method: str, path: str, body: bytes, page: bool) -> None:
        session = self.server.session
        segments = [unquote(s) for s in path.strip("/").split("/")] if path != "/" else []
        if page:
            self._send(200, teach_page(self.server.token).encode(), "text/html; charset=utf-8")
        elif method == "GET" and path == "/frame.jpg":
            frame = session.latest_jpeg
            if frame is None:
                raise _Refused(503, "no frame from the camera yet")
            self._send(200, frame, "image/jpeg")
        elif method == "GET" and segments == ["api", "state"]:
            self._json(200, session.state())
        elif method == "POST" and segments == ["api", "classes"]:
            name = _json_field(body, "name")
            session.add_class(name)
            self._json(201, {"name": name})
        elif segments[:2] == ["api", "classes"] and len(segments) == 3 and method == "DELETE":
            session.delete_class(segments[2])
            self._json(200, {"deleted": segments[2]})
        elif segments[:2] == ["api", "classes"] and segments[3:] == ["examples"]:
            if method != "POST":
                raise _Refused(405, "POST adds an example")
            count = (
                session.add_image(segments[2], body)
                if body
                else session.add_current_frame(segments[2])
            )
            self._json(201, {"class": segments[2], "examples": count})
        elif (
            segments[:2] == ["api", "classes"] and len(segments) == 5 and segments[3] == "examples"
        ):
            name, item = segments[2], segments[4]
            if method == "GET" and item.endswith(".jpg") and item[:-4].isdigit():
                with session.lock:
                    thumbnail = session.find(name).examples[int(item[:-4])].thumbnail
                self._send(200, thumbnail, "image/jpeg")
            elif method == "DELETE" and item.isdigit():
                session.delete_example(name, int(item))
                self._json(200, {"deleted": int(item)})
            else:
                raise _Refused(404, "no such example")
        elif method == "POST" and segments == ["api", "save"]:
            self._json(200, session.save())
        else:
            raise _Refused(404, f"no {method} {path}")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _json_field(body: bytes, name: str) -> str:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get(name), str):
        raise _Refused(400, f'expected {{"{name}": "..."}}')
    return str(data[name])
