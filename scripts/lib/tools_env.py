"""The Python packages the independent protocol clients need, in a virtualenv of their own.

A script calls `ensure_packages(__file__, name)` before importing `wire_client`: when
`websockets` or `msgpack` is missing, the script is run again inside a virtualenv under
~/.cache/plexus/relay-client (override the parent directory with PLEXUS_TOOLS) that has them,
installed from PyPI on first use.
"""

import os
import subprocess
import sys
from pathlib import Path

PACKAGES = ["websockets==15.0.1", "msgpack==1.1.0"]


def ensure_packages(script, name):
    try:
        import msgpack  # noqa: F401
        import websockets  # noqa: F401
        return
    except ImportError:
        pass
    home = Path(os.environ.get("PLEXUS_TOOLS", Path.home() / ".cache" / "plexus")) / "relay-client"
    python = home / "bin" / "python"
    marker = home / (".installed-" + "-".join(PACKAGES))
    if os.environ.get("PLEXUS_RELAY_CLIENT_VENV") == "1":
        raise SystemExit(f"{name}: the virtualenv lacks websockets or msgpack")
    if not (python.exists() and marker.exists()):
        print(f"{name}: installing {' '.join(PACKAGES)} into {home}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        subprocess.run([str(home / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
        marker.touch()
    os.environ["PLEXUS_RELAY_CLIENT_VENV"] = "1"
    os.execv(str(python), [str(python), script, *sys.argv[1:]])
