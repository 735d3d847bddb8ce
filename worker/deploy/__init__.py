"""Deployments: scoring graphs published to a compacted Kafka topic, which every replica follows.

``records`` is the topic's data model, ``topic`` reads and writes it, ``publish`` is what the ``deploy``
commands do (check everything, then write).
"""
