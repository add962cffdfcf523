"""Rate limits: fixed-window counters, shared by every worker through the database.

What is counted (defaults from ``RateLimitSettings``, ``REFGATE_RATELIMIT__*``):

=============  ==============  ======================  ==========================================
where          per             default                 what counts
=============  ==============  ======================  ==========================================
/oauth/token   source address  120 / minute            every request, before the body is read
/oauth/token   client          30 / minute             tokens issued: only an assertion that
                                                       verified counts, so a stranger cannot
                                                       spend a client's quota
/v1/*          client          600 / minute and        requests with a valid access token
                               100 / 10 s (burst)      (keyed on the token's ``sub``)
/v1/*          source address  120 / minute            requests without a valid token (each
                                                       one writes a denial event)
=============  ==============  ======================  ==========================================

Why these numbers: access tokens live 10 minutes and a machine client fetches
one every few minutes, so 30 a minute covers a restart storm of many worker
processes sharing one client; a burst of hundreds is a bug or an attack. 120
per address leaves room for several clients behind one NAT. 600 API requests a
minute sustains 10/s per client (an inbox sync), and the 10-second window caps
a burst at 100 (up to 200 across a window edge: fixed windows trade that slack
for one counter row per window).

Over a limit: 429 problem+json with ``Retry-After`` (seconds to the end of the
window). A refused token is also an audit event (a refused log-on); API 429s
are not, or a flood would write the audit log on the attacker's behalf.

Storage, ``backend = "database"``: table ``rate_limit(key, window_start,
count)``, shared by every worker. Each worker counts in memory and, every
``share_every`` seconds (0.5 by default) while it has traffic, adds what it
counted to the table in one statement and reads back the totals::

    INSERT INTO rate_limit (key, window_start, count) VALUES (:k1, :w1, :n1), …
    ON CONFLICT (key, window_start) DO UPDATE SET count = rate_limit.count + excluded.count
    RETURNING key, window_start, count

A request is judged on the last totals plus what this worker counted since, so
no request waits for a statement. The price: a worker sees the others' requests
up to ``share_every`` seconds late, so N workers can let through at most
N × (rate × ``share_every``) more than a limit before all of them refuse. With
the defaults and 2 to 4 workers that is a few requests per window; a flood is
stopped within a second. (The first version ran that upsert in a transaction of
its own before every request: a third of a read request's CPU, measured in
``bench/``.) ``share_every = 0`` restores one upsert per request, exact.

The per-client token count runs in the token request's transaction instead, so
it counts tokens actually issued, exactly (tokens are rare). PostgreSQL
serializes the upserts of one key on that row's lock. Once a minute a worker
deletes windows that have ended. Redis was not chosen: PostgreSQL is already
the one shared dependency. ``backend = "memory"`` keeps the counters in the
process (limits per worker); ``auto`` (the default) uses the database on
PostgreSQL and memory on SQLite, where a laptop runs one process and a second
writer would only contend for SQLite's single write lock.

Source addresses are ``scope["client"]``: behind a reverse proxy uvicorn's
``--proxy-headers`` (on in ``refgate-server serve``) takes them from
``X-Forwarded-For`` when the proxy is trusted (``--forwarded-allow-ips``).

Failure: when sharing fails (database unreachable), the worker keeps counting
in memory, logs a warning and retries at the next interval; with
``share_every = 0`` the request passes with a warning. It meets the same
database next and fails or succeeds on its own; a limiter must not turn a
database blip into a refusal of everything.

The package: ``limiter`` (the counters and their sharing through the
database; no web framework), ``middleware`` (the pure ASGI middleware that
applies the address and client limits, and the 429 it answers) and
``token_issue`` (the per-client count of issued tokens, in the token
request's transaction).
"""

from app.ratelimit.limiter import SWEEP_EVERY, Exceeded, Limit, RateLimiter, rate_limit_table
from app.ratelimit.middleware import RateLimitMiddleware, client_address, send_too_many
from app.ratelimit.token_issue import limit_token_issue

__all__ = [
    "SWEEP_EVERY",
    "Exceeded",
    "Limit",
    "RateLimitMiddleware",
    "RateLimiter",
    "client_address",
    "limit_token_issue",
    "rate_limit_table",
    "send_too_many",
]
