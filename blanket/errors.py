"""Every error blanket raises on purpose.

An exception's docstring is its meaning; its message is one line naming what is wrong and
how to fix it; ``exit_code`` is the restic-style code the CLI exits with. This module
imports nothing of ours, so every other module may import it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_REPO_MISSING = 10
EXIT_LOCKED = 11
EXIT_WRONG_KEY = 12


class BlanketError(Exception):
    """A failure that stops the command; the message is shown to the user as is."""

    exit_code = EXIT_FATAL


class UsageError(BlanketError):
    """The command line or configuration is wrong."""

    exit_code = EXIT_USAGE


class RepositoryMissing(BlanketError):
    """There is no blanket repository at the given URL."""

    exit_code = EXIT_REPO_MISSING


class RepositoryLocked(BlanketError):
    """Another run holds the repository's lock."""

    exit_code = EXIT_LOCKED


class WrongKey(BlanketError):
    """The keyring or passphrase at hand cannot open the repository."""

    exit_code = EXIT_WRONG_KEY


class IntegrityError(BlanketError):
    """An object on the store is damaged, forged, missing or out of place."""


class CryptoError(BlanketError):
    """gpg failed for a reason other than a wrong key."""


# --- storage errors ------------------------------------------------------------------


class StoreError(BlanketError):
    """The store failed an operation.

    ``retriable`` says whether the same call may succeed if tried again (throttling, 5xx,
    timeouts, dropped connections); not-found and bad-range errors are final.
    """

    retriable = False


class PermissionDenied(StoreError):
    """The store refused the operation to these credentials (a policy without delete, a
    read-only mount). The only store error a command may tolerate, where it can go on
    without the store's help (leftovers stay for gc, a lease expires on its own); every
    other store error is retried (``retriable``) or raised, never swallowed."""


class NotFound(StoreError):
    """The object does not exist on the store."""


class AlreadyExists(StoreError):
    """A put with ``if_absent`` found the key already stored."""


class BadRange(StoreError):
    """A ranged read asked for bytes outside the object."""


class InvalidKey(StoreError):
    """An object name breaks the store naming rules (plain ASCII, no file names)."""


class TransientStoreError(StoreError):
    """A failure that may go away if the call is repeated."""

    retriable = True
