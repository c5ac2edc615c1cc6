"""What the test modules share, one module per area (test modules import from here, never from
each other):

- :mod:`tests.support.processes`: child processes (edgewatch commands, helper processes) that
  log to a file and never outlive the test.
- :mod:`tests.support.kafka`: produce to and read back from the session's broker; what the flow
  answered.
- :mod:`tests.support.iothub`: the IoT Hub test set-up (PKI, the TLS MQTT broker on 8883, MQTT
  clients, the fake IoT Edge workload API) and its fixtures; :mod:`tests.support.mqtt_broker` is
  the broker process, :mod:`tests.support.iothub_flow` the IoT Hub sink process of the restart test.
- :mod:`tests.support.events`: labeled events and a one-sink flow for the Azure output tests.
- :mod:`tests.support.cli`, :mod:`tests.support.malformed`: CLI output, broken messages.
- :mod:`tests.support.scripts`: the repository's render scripts as modules.
"""
