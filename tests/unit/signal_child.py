"""A worker on the main thread of its own process, over the in-memory broker: for the signal tests.

Run as ``python signal_child.py DIR``: it writes 20 events, prints ``ready`` once they are committed, runs
until a signal stops it, then prints one JSON line with its exit code and the group's committed offsets.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from loop_world import World, wait_until

from worker.runtime.loop import Worker


def main(folder: str) -> None:
    world = World(Path(folder), partitions=1)
    worker = Worker(world.settings, world.pipeline(), world.metrics, world.health, world.broker.clients())

    def feed() -> None:
        world.produce(20)
        wait_until(lambda: world.committed().get(0) == 20, "the events committed")
        print("ready", flush=True)

    threading.Thread(target=feed, daemon=True).start()
    code = worker.run()  # the main thread: the worker installs its signal handlers
    print(json.dumps({"code": code, "committed": world.committed()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
