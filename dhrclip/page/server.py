"""The inspection page over HTTP: Starlette on uvicorn, one static page (``dhrclip/static``) and a
JSON API on an ``Inspector`` (``page/inspector.py``), which does the work.

The page has no login. It binds the loopback address unless told otherwise, answers only to the
names it is reached under (another site's DNS name rebound to this machine is refused), and refuses
uploads and changes sent from another site's page.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..detector.facade import DHRCLIP
from ..errors import UserError
from .inspector import AppSettings, Inspector
from .workfolder import WorkFolder

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
_CHUNK = 1 << 20
_WILDCARDS = ("0.0.0.0", "::", "")
_CHANGES = ("POST", "PUT", "PATCH", "DELETE")
SHUTDOWN_SECONDS = 5


def host_names(host: str) -> set[str]:
    """The names the page answers to when listening on ``host``: that one and ``localhost``; on a
    wildcard address also this machine's names. Any address literal is answered too: only a DNS
    name can be rebound to this machine by another site."""
    names = {host.lower(), "localhost"}
    if host in _WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return names


# Every response: no other site may frame the page (a framed page's buttons can be clicked through
# a decoy), load anything but its own files, or learn its address from a link.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _Guard:
    """Refuses a request whose Host is not one of ``names`` nor an address (400), and a POST or
    DELETE that a browser says comes from another site's page (its Origin; 403); adds
    ``SECURITY_HEADERS`` to every response."""

    def __init__(self, app: ASGIApp, names: set[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = _with_headers(send)
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if not self._known(host):
                await JSONResponse({"error": f"this server does not answer to the name {host!r}"},
                                   status_code=400)(scope, receive, send)
                return
            origin = headers.get("origin")
            own = f"{scope['scheme']}://{host}".lower()
            if scope["method"] in _CHANGES and origin is not None and origin.lower() != own:
                await JSONResponse({"error": "refused: the request comes from another site's page"},
                                   status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _known(self, host: str) -> bool:
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:  # a port that is not a number
            return False
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.names


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)
    return sending


def _number(request: Request, name: str) -> float | None:
    """The query parameter ``name`` as a finite number, or None when it is not given."""
    value = request.query_params.get(name, "")
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise HTTPException(400, f"{name} must be a finite number")
    return number


def _required(request: Request, name: str) -> float:
    number = _number(request, name)
    if number is None:
        raise HTTPException(400, f"{name} is required")
    return number


def _thresholds(request: Request) -> tuple[float | None, float | None]:
    return _number(request, "image_threshold"), _number(request, "pixel_threshold")


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"one upload may carry at most {limit / 2**20:.0f} MB; the page sends large "
                              f"selections in parts, so send fewer files at once")


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses the body once more than ``limit`` bytes have arrived, whatever the
    request says of its length (a chunked one says nothing)."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counted


async def _files(request: Request, inspector: Inspector) -> list[UploadFile]:
    limits = inspector.limits
    length = request.headers.get("content-length", "")
    # refused before a byte is read; a header of other digits ("²") is left to the counted body
    if length.isascii() and length.isdigit() and int(length) > limits.max_request_bytes:
        raise _too_large(limits.max_request_bytes)
    counted = Request(request.scope, _counted(request.receive, limits.max_request_bytes))
    try:
        form = await counted.form(max_files=limits.files_per_request, max_fields=8)
    except HTTPException as exc:
        if exc.status_code == 413:
            raise
        raise HTTPException(400, f"the upload could not be read: {exc.detail}") from exc
    return [f for f in form.getlist("files") if isinstance(f, UploadFile)]


def _download(handle: IO[bytes], media_type: str, filename: str) -> StreamingResponse:
    """Stream an open file and close it at the end."""

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return StreamingResponse(chunks(), media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def create_app(inspector: Inspector, host: str = "127.0.0.1") -> Starlette:
    """The page and its JSON API on ``inspector``, for a server listening on ``host``."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse(inspector.info())

    async def state(request: Request) -> Response:
        return JSONResponse(inspector.state(*_thresholds(request)))

    async def upload(request: Request) -> Response:
        files = await _files(request, inspector)
        try:
            entries = await run_in_threadpool(inspector.add_images, [(f.filename, f.file) for f in files])
        finally:
            for f in files:
                await f.close()
        return JSONResponse({"entries": entries})

    async def reference(request: Request) -> Response:
        if request.method == "DELETE":
            inspector.drop_reference()
            return JSONResponse({"ok": True})
        files = await _files(request, inspector)
        try:
            problem = await run_in_threadpool(inspector.set_reference, [(f.filename, f.file) for f in files])
        finally:
            for f in files:
                await f.close()
        return JSONResponse({"error": problem}, status_code=400) if problem else JSONResponse({"ok": True})

    async def clear(request: Request) -> Response:
        inspector.clear()
        return JSONResponse({"ok": True})

    def figure(request: Request) -> Response:  # sync: Starlette runs it in a thread
        low, high = _required(request, "low"), _required(request, "high")
        png = inspector.figure_png(int(request.path_params["entry"]), low, high, _number(request, "pixel_threshold"))
        if png is None:
            raise HTTPException(404, "no such result")
        # the address names the result's version (v=), so a cached figure is never an outdated one
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def results_csv(request: Request) -> Response:
        return Response(inspector.csv_text(*_thresholds(request)), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="predictions.csv"'})

    def maps_zip(request: Request) -> Response:
        handle = inspector.maps_zip()
        if handle is None:
            raise HTTPException(404, "no results yet")
        return _download(handle, "application/zip", "maps.zip")

    def threshold_json(request: Request) -> Response:
        image_t, pixel_t = _required(request, "image_threshold"), _number(request, "pixel_threshold")
        return JSONResponse(inspector.threshold_file(image_t, pixel_t),
                            headers={"Content-Disposition": 'attachment; filename="threshold.json"'})

    def bank(request: Request) -> Response:
        handle = inspector.bank()
        if handle is None:
            raise HTTPException(404, "no uploaded reference")
        return _download(handle, "application/octet-stream", "reference.safetensors")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return JSONResponse({"error": getattr(exc, "detail", str(exc))}, status_code=status)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("request %s failed", request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/state", state),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/reference", reference, methods=["POST", "DELETE"]),
        Route("/api/clear", clear, methods=["POST"]),
        Route("/api/figure/{entry:int}.png", figure),
        Route("/api/predictions.csv", results_csv),
        Route("/api/maps.zip", maps_zip),
        Route("/api/threshold.json", threshold_json),
        Route("/api/reference.safetensors", bank),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, names=host_names(host))],
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), refused with a clear message."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port or host",
                        field="port") from exc
    sock.listen(64)
    return sock


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(model: DHRCLIP, settings: AppSettings, host: str = "127.0.0.1", port: int = 7860,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve the page until interrupted; uploads and results live in a work folder removed at the
    end, once the worker has stopped writing to it. On a stop, requests still open (an upload a
    client never finishes) get ``SHUTDOWN_SECONDS``. ``ready`` gets the page's address once it
    listens."""
    sock = bind(host, port)
    if threading.current_thread() is threading.main_thread():  # a kill ends it like Ctrl+C: files removed
        signal.signal(signal.SIGTERM, _exit_on_signal)
    with WorkFolder() as folder:
        inspector = Inspector(model, settings, folder)
        inspector.start()
        try:
            server = uvicorn.Server(uvicorn.Config(create_app(inspector, host), log_level="warning",
                                                   access_log=False, timeout_graceful_shutdown=SHUTDOWN_SECONDS))
            bound, actual = sock.getsockname()[:2]
            shown = f"[{bound}]" if ":" in bound else bound
            if ready is not None:
                ready(f"http://{shown}:{actual}/")
            server.run(sockets=[sock])
        finally:
            inspector.stop()
            sock.close()
