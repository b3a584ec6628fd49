"""The Python host runner of the run protocol: ``run(run_dir) -> Status``, ``python -m host.runner RUN_DIR``."""
from host.runner.loading import RunnerError  # noqa: F401
from host.runner.run import RUNNER, RUNNER_VERSION, main, run  # noqa: F401
