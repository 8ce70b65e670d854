"""`python -m sokovan.agentd run ...`: the reference agent without the main CLI."""

from sokovan.agentd.cli import app

if __name__ == "__main__":
    app(prog_name="python -m sokovan.agentd")
