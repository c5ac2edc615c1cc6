"""Azure: IoT Hub, IoT Edge (edgeHub, module twin, the module runner) and Event Hubs.

* :mod:`~edgewatch.azure.connection_string` — ``Key=value;…`` connection strings (IoT Hub, Event Hubs);
* :mod:`~edgewatch.azure.messages` — labeled events and dead letters as cloud messages, and the
  store-and-forward sinks that carry them (send mode, dead-letter outputs);
* :mod:`~edgewatch.azure.iothub` — IoT Hub client modes (edge module, module, device) and the sender;
* :mod:`~edgewatch.azure.edgehub` — edgeHub as the flow's input;
* :mod:`~edgewatch.azure.twin` — module twin desired/reported properties applied to the running flow;
* :mod:`~edgewatch.azure.module` — ``edgewatch iotedge``: the flow as an IoT Edge module;
* :mod:`~edgewatch.azure.eventhubs` — Event Hubs' Kafka endpoint settings and the AMQP sink.
"""
