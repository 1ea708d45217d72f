"""The app's own server routes (``st.App(..., routes=ROUTES)`` in app.py): the teacher's cookie.

A Streamlit page cannot set an HttpOnly cookie, so after the teacher's password is checked the page
posts a one-time ticket (``TICKETS``, never the password) to ``UNLOCK``; the route sets the signed,
expiring, HttpOnly cookie ``tl_teacher`` and sends the browser back to the page it came from, where
``st.context.cookies`` reads it: a reload or a direct /board address stays unlocked. ``LOCK`` deletes
the cookie. Both answer POST only, and ``next`` is a path of this app (never another site).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from tl_core import classroom
from tl_core.paths import default_runs_dir

UNLOCK, LOCK = "/api/teacher/unlock", "/api/teacher/lock"
TICKETS = classroom.Tickets()


def _back(form) -> str:
    """The page to go back to: a path of this app, else its home."""
    path = str(form.get("next") or "/")
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


async def unlock(request: Request):
    form = await request.form()
    if not TICKETS.redeem(form.get("ticket")):
        return PlainTextResponse("This unlock was used already or is too old. What to do: go back to the app and "
                                 "enter the teacher password again.", status_code=403)
    response = RedirectResponse(_back(form), status_code=303)
    response.set_cookie(classroom.TEACHER_COOKIE, classroom.teacher_cookie(classroom.class_secret(default_runs_dir())),
                        max_age=int(classroom.TEACHER_HOURS * 3600), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def lock(request: Request):
    response = RedirectResponse(_back(await request.form()), status_code=303)
    response.delete_cookie(classroom.TEACHER_COOKIE, path="/", httponly=True, samesite="strict")
    return response


ROUTES = [Route(UNLOCK, unlock, methods=["POST"]), Route(LOCK, lock, methods=["POST"])]
