"""cProfile in a live pooler worker, toggled by SIGUSR1 (a measurement aid, not product code).

    POOLER_LIVE_PROFILE=/tmp/prof PYTHONPATH=bench/liveprof .venv/bin/pooler serve CONFIG
    kill -USR1 <worker pid>    # starts profiling
    kill -USR1 <worker pid>    # stops it and writes /tmp/prof/<pid>.prof (pstats)

Python imports this module at start when its folder is on PYTHONPATH; it does nothing unless
POOLER_LIVE_PROFILE names a folder, and touches only worker processes (`python -m
pooler.server.worker_main`, which inherit the environment; the supervisor keeps SIGUSR1 for
reopening its log). The profile is cProfile's: deterministic, so it slows the worker down
and its times are wall-clock (a write that wakes a peer and is preempted counts in full);
read call counts and relative costs, not absolute µs.
"""

import os
import signal
import sys

_folder = os.environ.get("POOLER_LIVE_PROFILE")
if _folder and "pooler.server.worker_main" in sys.orig_argv:
    import cProfile

    _profile: list[cProfile.Profile] = []

    def _toggle(signum: int, frame: object) -> None:
        if not _profile:
            _profile.append(cProfile.Profile())
            _profile[0].enable()
            return
        profile = _profile.pop()
        profile.disable()
        os.makedirs(_folder, exist_ok=True)
        profile.dump_stats(os.path.join(_folder, f"{os.getpid()}.prof"))

    signal.signal(signal.SIGUSR1, _toggle)
