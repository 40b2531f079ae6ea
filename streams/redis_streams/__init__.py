"""Redis Streams as a transport: records as stream entries (:mod:`.entries`) and the consumer
that runs handlers in a consumer group (:mod:`.consumer`)."""
