"""The watch server: a Starlette app (the ASGI stack tiled already brings) serving the page and its data.

Routes: ``/`` the page (``static/watch.html`` + ``watch.js``: plain JS and SVG), ``/api/state``
the campaign's view as JSON (``?after=VERSION`` waits up to ``LONG_POLL_S`` for a newer one:
the page follows the campaign with one open request), ``/api/posterior.png`` the posterior map,
``/api/control/{pause,resume,stop}`` (POST) the queueserver controls, ``/login`` and ``/healthz``.

Security, as the rest of gainloop:

* with an API key (the Tiled server's: the watch reads the catalog with it) every route but
  ``/login`` and ``/healthz`` refuses anonymous requests (401). A browser signs in once, on
  ``/login`` (a password field) or by opening ``/?api_key=KEY``; either sets an HttpOnly,
  SameSite=Strict cookie holding an HMAC of the key (never the key) and redirects to the page
  without the key in the address. Scripts may send ``Authorization: Apikey KEY`` instead. The
  key is never written into a page, a JSON answer or a log line.
* controls need the key (none without one) and a same-origin request (the ``X-Gainloop-Watch``
  header, which a cross-site form cannot send); pages may not be framed (clickjacking) and run
  only the server's own script (Content-Security-Policy).
* on a loopback interface the ``Host`` header must name loopback (no DNS rebinding).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import json
import math
from importlib import resources
from urllib.parse import parse_qs

__all__ = ["COOKIE", "LONG_POLL_S", "build_app", "session_token"]

COOKIE = "gainloop_watch"
#: Longest wait of one ``/api/state?after=`` request, seconds.
LONG_POLL_S = 20.0
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
        "style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
}


def session_token(api_key: str) -> str:
    """The cookie's value for a browser that gave ``api_key``: an HMAC of it (the key cannot be read back)."""
    return hmac.new(api_key.encode(), b"gainloop-watch-session", hashlib.sha256).hexdigest()


def _static(name: str) -> str:
    return resources.files("gainloop.watch").joinpath("static", name).read_text(encoding="utf-8")


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def build_app(follower, *, api_key: str | None, loopback: bool, control=None):
    """The ASGI app following ``follower``'s campaign; ``api_key``: required of every request (None: none)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    token = session_token(api_key) if api_key else None
    page = _static("watch.html")
    script = _static("watch.js")

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Apikey ") and hmac.compare_digest(header[len("Apikey ") :].encode(), api_key.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), token.encode())

    def with_headers(response: Response) -> Response:
        for k, v in _HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def signed_in(target: str = "./") -> Response:
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return with_headers(response)

    def refused(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return with_headers(JSONResponse({"error": "sign in with the catalog's API key"}, status_code=401))
        return (
            with_headers(RedirectResponse("/login", status_code=303))
            if request.method == "GET"
            else Response(status_code=401)
        )

    def host_ok(request: Request) -> bool:
        if not loopback:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name in _LOOPBACK_NAMES

    async def index(request: Request) -> Response:
        given = request.query_params.get("api_key")
        if given is not None and api_key is not None:
            if hmac.compare_digest(given.encode(), api_key.encode()):
                return signed_in("/")
            return with_headers(HTMLResponse(_login_page("That key was refused."), status_code=401))
        if not authorised(request):
            return refused(request)
        return with_headers(HTMLResponse(page))

    async def js(request: Request) -> Response:
        return with_headers(Response(script, media_type="text/javascript"))

    async def login(request: Request) -> Response:
        if api_key is None:
            return with_headers(RedirectResponse("/", status_code=303))
        if request.method == "POST":
            fields = parse_qs((await request.body()).decode("utf-8", "replace"))
            given = (fields.get("api_key") or [""])[0]
            if given and hmac.compare_digest(given.encode(), api_key.encode()):
                return signed_in("/")
            return with_headers(HTMLResponse(_login_page("That key was refused."), status_code=401))
        return with_headers(HTMLResponse(_login_page("")))

    async def state(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        try:
            after = int(request.query_params.get("after", "-1"))
        except ValueError:
            after = -1
        await follower.changed_after(after, LONG_POLL_S)
        view = follower.snapshot()
        view["keyed"] = api_key is not None
        body = json.dumps(view, default=_json_default, allow_nan=False)
        return with_headers(Response(body, media_type="application/json"))

    async def posterior(request: Request) -> Response:
        if not authorised(request):
            return refused(request)
        _, png = follower.posterior()
        if png is None:
            return with_headers(PlainTextResponse("no posterior map yet", status_code=404))
        return with_headers(Response(png, media_type="image/png"))

    async def act(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        from gainloop.watch.control import ControlError

        if api_key is None:
            return with_headers(JSONResponse({"error": "no control without the API key"}, status_code=403))
        if not authorised(request):
            return refused(request)
        if request.headers.get("x-gainloop-watch") != "1":
            return with_headers(JSONResponse({"error": "controls are sent by the watch page only"}, status_code=403))
        if control is None:
            return with_headers(JSONResponse({"error": "no queueserver is configured"}, status_code=409))
        action = request.path_params["action"]
        try:
            result = await run_in_threadpool(control.act, action, follower.snapshot())
        except ControlError as exc:
            return with_headers(JSONResponse({"error": str(exc)}, status_code=409))
        follower.poke()
        return with_headers(JSONResponse(result))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    class Guard:
        """Host check for every request (DNS rebinding) before the routes."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and not host_ok(Request(scope)):
                await PlainTextResponse("unexpected Host header", status_code=421)(scope, receive, send)
                return
            await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import asyncio

        follower.attach_loop(asyncio.get_running_loop())
        yield

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/watch.js", js),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/api/state", state),
            Route("/api/posterior.png", posterior),
            Route("/api/control/{action}", act, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/favicon.ico", favicon),
        ],
        lifespan=lifespan,
    )
    return Guard(app)


def _login_page(message: str) -> str:
    note = f"<p class='bad'>{html.escape(message)}</p>" if message else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gainloop watch: sign in</title>"
        "<style>body{font-family:sans-serif;margin:3em auto;max-width:34em}.bad{color:#a33}</style></head><body>"
        "<h1>gainloop watch</h1><p>This campaign's catalog needs its API key (the Tiled server's). "
        "It is kept in this browser as a session cookie that does not contain the key.</p>"
        f"{note}<form method='post' action='/login'><label>API key <input type='password' name='api_key' "
        "autocomplete='current-password' autofocus></label> <button type='submit'>Sign in</button></form>"
        "</body></html>"
    )
