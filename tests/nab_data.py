"""Where the real labelled series used by the tests live."""

import os
from pathlib import Path

NAB_DIR = Path(os.environ.get("NAB_DATA_DIR",
                              Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"))
MACHINE_TEMP = NAB_DIR / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
WINDOWS = NAB_DIR / "labels" / "combined_windows.json"
