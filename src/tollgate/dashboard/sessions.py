"""Dashboard sessions: opaque ids in a cookie, state on the server, a CSRF token per session.

- **Where sessions live.** In this process's memory (`SessionStore`, owned by the `Dashboard`
  that `create_app` builds; no global). A restart signs everyone out, and several processes behind
  one address need sticky sessions. Moving them to the database is a later migration.
- **The cookie** carries only a random id (256 bits); the store keys sessions by the id's
  SHA-256, so the ids themselves are never kept. The cookie is `HttpOnly`, `SameSite=Lax`,
  `Path=/dashboard`, and `Secure` when the request came over https.
- **Expiry.** A session ends after `IDLE_SECONDS` without a request, and `ABSOLUTE_SECONDS` after
  sign-in whatever happens. An expired session is reported as such (not just "signed out").
- **CSRF** (synchronizer token): each session holds a random token that every form carries in a
  hidden field; every POST compares it in constant time. A token from another session, an old
  page or no token is refused, and nothing changes. The sign-in form has an anonymous session of
  its own, and signing in replaces it with a fresh one (so a planted id is never promoted).
- **The API token** a user signed in with stays in the server-side session, never in the
  browser: every request verifies it again (`TokenVerifier`, cached for seconds), so revoking or
  expiring the token, or disabling the account, ends the dashboard session too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE_NAME = "tollgate_session"
IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 12 * 60 * 60
ANONYMOUS_SECONDS = 60 * 60  # a sign-in form left open this long must be reloaded
MAX_SESSIONS = 20_000  # past this, the least recently used sessions are dropped first


@dataclass(slots=True)
class Session:
    """One browser's session. `account_id` and `api_token` are None until sign-in."""

    csrf_token: str
    created_at: float
    last_seen: float
    account_id: str | None = None
    api_token: str | None = field(default=None, repr=False)

    @property
    def signed_in(self) -> bool:
        return self.account_id is not None and self.api_token is not None


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a cookie resolved to: a live session, or why there is none."""

    session: Session | None
    expired: bool = False


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """In-memory sessions. `clock` is monotonic seconds (tests may replace it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self) -> tuple[str, Session]:
        """A new anonymous session (for the sign-in form): `(cookie value, session)`."""
        return self._insert(Session(secrets.token_urlsafe(32), self.clock(), self.clock()))

    def sign_in(self, previous: str | None, account_id: str, api_token: str) -> tuple[str, Session]:
        """Replace the browser's session with a fresh signed-in one (a new id and CSRF token)."""
        if previous:
            self.end(previous)
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), now, now, account_id, api_token)
        return self._insert(session)

    def get(self, session_id: str | None) -> Lookup:
        """The live session for a cookie value, touching its idle timer; or why there is none."""
        if not session_id:
            return Lookup(None)
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return Lookup(None)
        now = self.clock()
        if self._is_expired(session, now):
            del self._sessions[key]
            return Lookup(None, expired=session.signed_in)
        session.last_seen = now
        return Lookup(session)

    def end(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)

    def end_account(self, account_id: str) -> None:
        """Sign every session of an account out."""
        for key in [k for k, s in self._sessions.items() if s.account_id == account_id]:
            self._sessions.pop(key, None)

    @staticmethod
    def csrf_matches(session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(
            session.csrf_token.encode(), (submitted or "").encode()
        )

    def _is_expired(self, session: Session, now: float) -> bool:
        if not session.signed_in:
            return now - session.created_at > ANONYMOUS_SECONDS
        return now - session.last_seen > IDLE_SECONDS or now - session.created_at > ABSOLUTE_SECONDS

    def _insert(self, session: Session) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        if len(self._sessions) >= MAX_SESSIONS:
            self._prune()
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def _prune(self) -> None:
        """Drop expired sessions; if still full, the least recently used quarter."""
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if self._is_expired(s, now)]:
            del self._sessions[key]
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = sorted(self._sessions, key=lambda k: self._sessions[k].last_seen)
            for key in oldest[: MAX_SESSIONS // 4]:
                del self._sessions[key]
