"""Orchestration: the API and the protocol front ends call these, never the store directly."""
