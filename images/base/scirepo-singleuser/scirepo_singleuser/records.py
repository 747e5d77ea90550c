"""What the image's build records for every server's start: the JupyterLab settings schemas
checked (labsettings.py) and the regular expressions compiled (regexes.py).

Run when the base image is built, and again by every stack after its packages (which may
add JupyterLab extensions with schemas, and server extensions with regular expressions):
`python -m scirepo_singleuser.records`.
"""

from __future__ import annotations

import sys

from scirepo_singleuser import labsettings, regexes


def main() -> None:
    schemas = labsettings.record()
    print(f"{schemas} JupyterLab settings schemas checked", file=sys.stderr)
    patterns = regexes.record()
    print(f"{patterns} regular expressions recorded", file=sys.stderr)


if __name__ == "__main__":
    main()
