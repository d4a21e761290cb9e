import pytest
from click.testing import CliRunner

from tunekit.cli import main


@pytest.fixture
def cli():
    """Run a tunekit command in-process: cli("flops", "--model", ...) -> click Result."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
