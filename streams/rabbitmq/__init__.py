"""RabbitMQ as a transport: the topology a topic stands for (:mod:`.topology`), records as AMQP
messages (:mod:`.messages`) and the consumer that runs handlers on lane queues (:mod:`.consumer`)."""
