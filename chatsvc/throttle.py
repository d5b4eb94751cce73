"""Limits on password guessing and sign-ups: recent events per username and per client address, in memory.

Each process keeps its own counters (several instances behind a load
balancer each allow the full amount), they start empty on a restart, and
their memory is bounded: keys whose events are all older than the window
are dropped as new events arrive, and past ``MAX_KEYS`` keys the ones idle
longest are forgotten first.

Logins (``CHATSVC_LOGIN_FAILURES`` failures per 15 minutes). Only failures
count; a successful login neither counts nor clears earlier failures (else
a guesser with an account of their own could wipe their record between
guesses). A login is refused with 429, before its password is checked, when

- its client address has failed the limit's number of times, whatever the
  usernames: from there guessing stops, right password or not; or
- its username has failed the limit's number of times (from any addresses)
  and its client address has failed at least once in the window: an account
  under attack from many addresses can still be opened from an address with
  a clean record, where its owner usually is, and each attacking address
  gets at most one guess at it per window.

Registrations (``CHATSVC_REGISTER_RATE`` per client address per hour):
every request that gets past validation counts, whether or not the account
is created, since each costs a password hash.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable

from chatsvc.errors import TooManyRequests

LOGIN_WINDOW_SECONDS = 15 * 60
REGISTER_WINDOW_SECONDS = 60 * 60
# Per counter. A key costs about 300 bytes plus 8 per event kept: at the default limit of 10,
# a full counter holds about 18 MiB.
MAX_KEYS = 50_000

Clock = Callable[[], float]


class RecentEvents:
    """When each key's last ``limit`` events happened, for those within ``window`` seconds."""

    def __init__(self, limit: int, window: float, *, max_keys: int = MAX_KEYS, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        # Least recently added-to first, so expired keys are found at the front.
        self._events: OrderedDict[str, array[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _recent(self, key: str, now: float) -> array[float] | None:
        times = self._events.get(key)
        if times is None:
            return None
        del times[: bisect.bisect_right(times, now - self.window)]
        if not times:
            del self._events[key]
            return None
        return times

    def count(self, key: str) -> int:
        """Events of the key within the window."""
        times = self._recent(key, self._clock())
        return 0 if times is None else len(times)

    def full_for(self, key: str) -> float | None:
        """Seconds until the key is below its limit again, or None if it is below it now (or there is no limit)."""
        if self.limit <= 0:
            return None
        now = self._clock()
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return None
        return times[-self.limit] + self.window - now

    def clear_in(self, key: str) -> float | None:
        """Seconds until the key has no event in the window, or None if it has none now."""
        now = self._clock()
        times = self._recent(key, now)
        return None if times is None else times[-1] + self.window - now

    def add(self, key: str) -> None:
        """Record one event for the key now."""
        if self.limit <= 0:
            return
        now = self._clock()
        times = self._recent(key, now)
        if times is None:
            times = self._events[key] = array("d")
        else:
            self._events.move_to_end(key)
        times.append(now)
        # Only the newest `limit` events can decide anything.
        del times[: -self.limit]
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._events:
            key, times = next(iter(self._events.items()))
            if times[-1] > now - self.window and len(self._events) <= self._max_keys:
                return
            del self._events[key]


class Throttle:
    """The failed-login and registration limits of one process."""

    def __init__(self, login_failures: int, register_rate: int, *, clock: Clock = time.monotonic) -> None:
        self.failures_by_address = RecentEvents(login_failures, LOGIN_WINDOW_SECONDS, clock=clock)
        self.failures_by_username = RecentEvents(login_failures, LOGIN_WINDOW_SECONDS, clock=clock)
        self.registrations = RecentEvents(register_rate, REGISTER_WINDOW_SECONDS, clock=clock)

    def check_login(self, username: str, address: str) -> None:
        """Raise TooManyRequests if a login for this username from this address is not to be tried now."""
        wait = self.failures_by_address.full_for(address)
        if wait is not None:
            raise TooManyRequests("Too many failed logins from this address; try again later", retry_after=wait)
        account_wait = self.failures_by_username.full_for(username)
        address_wait = self.failures_by_address.clear_in(address)
        if account_wait is not None and address_wait is not None:
            raise TooManyRequests(
                "Too many failed logins for this account; try again later", retry_after=min(account_wait, address_wait)
            )

    def login_failed(self, username: str, address: str) -> None:
        """Count a wrong password (or unknown username) against both."""
        self.failures_by_address.add(address)
        self.failures_by_username.add(username)

    def register_attempt(self, address: str) -> None:
        """Count a registration from the address, or raise TooManyRequests if it has used up its hour."""
        wait = self.registrations.full_for(address)
        if wait is not None:
            raise TooManyRequests("Too many registrations from this address; try again later", retry_after=wait)
        self.registrations.add(address)
