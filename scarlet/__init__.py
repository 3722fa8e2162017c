"""The ``scarlet`` command: embedded simulation, local service launcher and reports."""
