"""The lab: a supervisor for the bundled gateway and engines, traffic, and incident scenarios."""
