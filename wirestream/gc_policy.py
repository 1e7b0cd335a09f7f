"""How often Python's cyclic garbage collector runs in wirestream's long, busy processes.

A packet worker holds its connections' state (tens of thousands of small, long-lived
objects) and makes several small records per connection; ``analyze`` holds the output
records it reads. With the default thresholds (a collection every 700 allocations) the
collector rescans all of them over and over: measured, 8 % of a packet worker's analysis
on the bench capture, 19 % of a Faust worker's CPU with 100k open connections, ~30 % of
analyze's decoding. Few of those objects are in cycles (an analyser and its context
are, and are freed by the rarer collections): collect rarely instead.
"""

from __future__ import annotations

import gc

#: collections of generation 0 after this many allocations (default 700); then the
#: older generations as by default's ratios, a little rarer
THRESHOLDS = (50_000, 20, 100)


def collect_rarely(freeze: bool = False) -> None:
    """Set :data:`THRESHOLDS`; ``freeze``: also move every object alive now (the imported
    modules, the process's setup) out of the collector's sight for good (``gc.freeze``),
    so that no collection walks them again."""
    if freeze:
        gc.freeze()
    gc.set_threshold(*THRESHOLDS)
