"""The lab: market simulators with known truth, and what is judged against it.

The closed-loop harnesses (live over Kafka, and in-process) and policy evaluation against the truth.
"""
