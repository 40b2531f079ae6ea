"""Every correction to faust-streaming and aiokafka, and every read of their private names."""
