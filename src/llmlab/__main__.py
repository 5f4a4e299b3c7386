"""`python -m llmlab` (used by torchrun) runs the same CLI as the `llmlab` command."""

import sys

from llmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
