"""Private: fake ``/dev/cpu/*/msr`` and ``/sys/class/powercap`` trees in the
kernel's formats, for the tests and for ``benchmarks/meter_read.py``.

Not public API: they may change with the meters they exercise.
"""
