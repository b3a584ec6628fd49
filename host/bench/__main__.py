"""``python -m host.bench <what>``: benchmarks that print figures (never timed unit tests)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHES = {"build": "host.bench.build", "pipeline": "host.bench.pipeline", "runtime": "host.bench.runtime"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m host.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:])


sys.exit(main())
