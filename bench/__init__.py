"""mayflyd's benchmarks. Run from a source checkout, they use its daemon/
package when mayflyd is not installed."""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("mayflyd") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
