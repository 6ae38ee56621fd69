import sys
from pathlib import Path

# Test helpers (fakes, e2e harness) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))
