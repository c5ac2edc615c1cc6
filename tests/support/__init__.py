"""What the test modules share, one module per area (test modules import from here, never from
each other):

- :mod:`tests.support.processes`: child processes (edgewatch commands, helper processes) that
  log to a file and never outlive the test.
- :mod:`tests.support.kafka`: produce to and read back from the session's broker; what the flow
  answered.
- :mod:`tests.support.cli`, :mod:`tests.support.malformed`: CLI output, broken messages.
"""
