"""Deployments: scoring graphs published to a compacted Kafka topic, which every replica follows.

``records`` is the topic's data model, ``topic`` reads and writes it, ``publish`` checks and writes a
version, ``follow`` is a replica following it, ``status`` what replicas report, ``api.Deployments`` the
commands from Python and ``cli`` the same from the command line.
"""

from worker.deploy.api import Deployments, DeploymentSummary, ReplicaView, VersionSummary

__all__ = ["DeploymentSummary", "Deployments", "ReplicaView", "VersionSummary"]
