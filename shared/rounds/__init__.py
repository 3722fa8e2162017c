"""Round state machines: the aggregator and client halves of one federated round.

They take messages and return messages; transports, stores and processes live elsewhere,
so the same logic runs in the embedded simulation and in the RabbitMQ services.
"""
