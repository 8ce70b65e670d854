"""`sokovan agent`: run reference agents and inject faults into them."""

from sokovan.agentd.cli import app

__all__ = ["app"]
