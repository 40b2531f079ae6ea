"""The consume path of handlers: records from the consumer's fetches to the handler, a
partition's batch at a time.

Faust delivers one record at a time through its conductor, stream buffers,
event objects and per-event acknowledgements; measured here, that machinery
alone holds a bare agent to about a seventh of what the aiokafka consumer under
it delivers. :class:`~streams.consume.dispatch.BatchDispatcher` takes the
records of the handlers' topics out of each fetch before Faust's delivery sees
them and hands them to one task per partition. Faust keeps what it does well:
group membership and assignment, offset commits, tables and their recovery,
exactly_once transactions, the web server and the worker CLI.

Per batch (at most ``STREAMS_BATCH_MAX_RECORDS`` records of one partition):

* the gap guard checks the first offset against the next expected one;
* each record goes through :meth:`~streams.consume.runner.HandlerRunner.process`
  as before (decode, dedup, retries, dead letters, effects), with Faust's
  current event set so that table writes find their partition;
* the processed-ID entries of the batch are written to their changelog as one
  producer batch per changelog partition (:mod:`streams.consume.changelog`),
  not one send per entry; under exactly_once, in the partition's transaction;
* once every write of the batch is acknowledged by the broker, all its offsets
  are acknowledged at once, and Faust's commit can pass them.

``STREAMS_CONSUME_PATH=events`` keeps the previous path (one Faust agent per
handler, Faust's per-event delivery).
"""
