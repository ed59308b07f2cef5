"""``python -m tests.support.fault_node …``: the real ``dicom-node`` entry point with
the fault pipelines added as a parameter (and used by its embedded worker too)."""

import sys

from tests.support.fault_pipelines import FAULTS
from workers.entry import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], pipelines=FAULTS, module="tests.support.fault_node"))
