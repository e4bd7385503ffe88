"""The plan by difference: which of a run's buckets its target already holds unchanged,
which it reads, and the windows they are laid into (window bounds, never rows).

``difference`` compares the source's bucket counts with what the inventory holds, and
carries the plan to XCom and back; ``layout`` lays the planned buckets on the calendar
of ``window_size`` within the row bounds of a partition. Plain values in, plain values
out: the counting is ``extract``'s, the holding ``holdings``'.

Owns: nothing (the plan's figures are kept with the run, by holdings).
May import: common
"""
