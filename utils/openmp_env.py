"""OpenMP settings that must be in the environment before torch is imported (libgomp reads them
once, when it is loaded): import this module first in an entry point.

OMP_WAIT_POLICY=PASSIVE: a compute thread that has finished its share of an operation sleeps
instead of spinning at the barrier. Spinning costs nothing on an idle machine, but when another
job holds a core, the spinning threads take the time the last working thread needs: the
synthetic demo with 2 threads fell from 69 (1 thread) to 7 samples/s next to one busy process,
and ran at 59 with the passive policy (README "Measured numbers"). A value already set in the
environment is kept.
"""

import os

WAIT_POLICY = "PASSIVE"


def set_openmp_defaults(environ=os.environ):
    """Sets OMP_WAIT_POLICY to PASSIVE unless the environment already chooses one; returns the
    policy in force."""
    return environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


set_openmp_defaults()
