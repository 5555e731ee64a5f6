#!/usr/bin/env python3
"""XR0 Workstation. No argument opens the desktop app on the simulated rig;
`python main.py <command>` runs headless (`python main.py --help` lists the commands)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
