"""A gc process for the multi-process test: collect in a loop until a stop file appears.

    python -m tests.gc_loop STOP_FILE
Prints the rounds and the blobs it freed as one JSON line at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta

from casstore.config import Settings
from casstore.errors import LeaseHeld
from casstore.store import Store


def main(stop_file: str) -> None:
    store = Store(Settings.from_env())
    rounds = freed = held = 0
    while not os.path.exists(stop_file):
        try:
            report = store.gc.run(actor="gc-process", orphan_grace=timedelta(0))
            freed += report.blobs_removed + report.orphans_removed
            rounds += 1
        except LeaseHeld:
            held += 1
            time.sleep(0.01)
    print(json.dumps({"rounds": rounds, "freed": freed, "lease_busy": held}))


if __name__ == "__main__":
    main(sys.argv[1])
