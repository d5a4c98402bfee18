"""Crash-safe state: queues, retry counters, dedup, archive. The only package that imports
tinydb, split by job:

  storage.py  the state file: atomic TinyDB storage, its cache, shape checks, migration
  unit.py     a unit of work: load once, change in memory (transitions checked), save once
  archive.py  finished records, one id once in its latest form, and the dedup index
  store.py    the Store: the domain operations the gateway and the commands call
  views.py    read views for `smsgw status` and `smsgw messages`
"""

from .archive import Archive
from .storage import STATE_VERSION, AtomicJSONStorage, StateCache
from .store import RECENT_KEYS, AcceptResult, Batch, CancelResult, RetryResult, Store
from .unit import Unit
from .views import Listing, MessageFilter

__all__ = ["STATE_VERSION", "RECENT_KEYS", "AcceptResult", "Archive", "AtomicJSONStorage",
           "Batch", "CancelResult", "Listing", "MessageFilter", "RetryResult", "StateCache",
           "Store", "Unit"]
