"""Pure protocol cores: Raft, SWIM, the scheduler and the execution protocol.

Nothing here performs I/O, reads a clock or touches global randomness; the
adapters in :mod:`dkron.io_trio` and the simulator in :mod:`dkron.testing`
feed the cores data and the current time and carry their outputs away.
"""
