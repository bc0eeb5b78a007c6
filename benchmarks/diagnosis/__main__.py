"""``python -m benchmarks.diagnosis``: run the pathology benchmark."""

import sys

from benchmarks.diagnosis.run import main

sys.exit(main())
